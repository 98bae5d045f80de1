"""Properties of the one logits -> probabilities transform and of SamplingParams validation."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ssd import SamplingParams
from ssd.sampling import SamplingTensors, probs_from_logits

logit_rows = st.lists(
    st.floats(-8, 8, allow_nan=False).map(lambda x: round(x, 3)), min_size=2, max_size=12
)


def transform(logits, **kw):
    z = torch.tensor([logits], dtype=torch.float64)
    return probs_from_logits(z, SamplingTensors.from_params(SamplingParams(**kw)))[0]


@given(logit_rows, st.sampled_from([0.3, 1.0, 2.5]))
def test_temperature_alone_is_softmax_of_scaled_logits(logits, t):
    want = torch.softmax(torch.tensor(logits, dtype=torch.float64) / t, -1)
    assert torch.allclose(transform(logits, temperature=t), want, rtol=0, atol=1e-15)


@given(logit_rows)
def test_greedy_is_one_hot_at_first_argmax(logits):
    p = transform(logits, temperature=0, top_k=1, top_p=0.2)
    assert p.sum() == 1 and p.max() == 1
    assert int(p.argmax()) == logits.index(max(logits))


@given(logit_rows, st.integers(1, 12))
def test_top_k_keeps_exactly_the_k_largest(logits, k):
    p = transform(logits, top_k=k)
    kept = (p > 0).nonzero()[:, 0].tolist()
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    assert sorted(kept) == sorted(order[: min(k, len(logits))])
    assert abs(p.sum().item() - 1) < 1e-12


@given(logit_rows, st.floats(0.05, 1.0))
def test_top_p_keeps_the_shortest_prefix_reaching_p(logits, top_p):
    full = transform(logits)
    p = transform(logits, top_p=top_p)
    order = sorted(range(len(logits)), key=lambda i: (-full[i].item(), i))
    kept = [i for i in order if p[i] > 0]
    assert kept == order[: len(kept)]
    mass = sum(full[i].item() for i in kept)
    assert mass >= top_p - 1e-12 or top_p == 1.0
    assert sum(full[i].item() for i in kept[:-1]) < top_p  # one token fewer would not reach it
    assert torch.allclose(p[kept], full[kept] / mass, atol=1e-12)


@given(logit_rows, st.floats(0.0, 1.0))
def test_min_p_keeps_tokens_above_fraction_of_max(logits, min_p):
    full = transform(logits)
    p = transform(logits, min_p=min_p)
    assert torch.equal(p > 0, full >= min_p * full.max())


def test_filters_compose_in_order():
    logits = [4.0, 3.0, 2.0, 1.0, 0.0]
    p = transform(logits, temperature=2.0, top_k=4, top_p=0.7, min_p=0.0)
    z = torch.tensor(logits[:4], dtype=torch.float64) / 2
    full = torch.softmax(z, -1)  # after top-k: 4 tokens
    n = int((full.cumsum(-1) - full < 0.7).sum())
    want = torch.zeros(5, dtype=torch.float64)
    want[:n] = full[:n] / full[:n].sum()
    assert torch.allclose(p, want, atol=1e-15)


def test_rows_use_their_own_params():
    z = torch.randn(3, 2, 9, dtype=torch.float64)
    params = [SamplingParams(temperature=0), SamplingParams(top_k=2), SamplingParams(top_p=0.5)]
    together = probs_from_logits(z, SamplingTensors.from_params(params))
    for i, sp in enumerate(params):
        alone = probs_from_logits(z[i : i + 1], SamplingTensors.from_params(sp))
        assert torch.equal(together[i], alone[0])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": -0.1}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": -3}, "seed"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ],
)
def test_bad_sampling_params_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kw)


def test_logits_batch_must_match_params():
    with pytest.raises(ValueError, match="sampling rows"):
        probs_from_logits(torch.zeros(3, 5), SamplingTensors.from_params(SamplingParams(), batch=2))
