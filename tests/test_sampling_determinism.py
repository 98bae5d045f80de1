"""Same key => same output; a row's output is independent of its batch; compiled == eager."""

import pytest
import torch

from ssd import SamplingParams
from ssd import random as rnd
from ssd.sampling import (
    SamplingTensors,
    greedy_chain,
    probs_from_logits,
    saguaro_q,
    sample,
    verify_chain,
)

B, K, V = 2048, 4, 50


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 2, -1)
    q = saguaro_q(torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1), 3, 0.5)
    keys = rnd.split(rnd.key(seed), B)
    tokens = sample(q, rnd.split(rnd.fold_in(keys, 1), K))
    point_mass = torch.arange(B) % 5 == 0
    return p, q, tokens, rnd.fold_in(keys, 2), point_mass


def pipeline(logits, st, q, tokens, key, point_mass):
    p = probs_from_logits(logits, st)
    out = verify_chain(p, q, tokens, key, point_mass)
    return out.num_accepted, out.next_token


def test_same_key_gives_bitwise_same_outcome():
    p, q, tokens, key, pm = inputs()
    a, b = verify_chain(p, q, tokens, key, pm), verify_chain(p, q, tokens, key, pm)
    assert torch.equal(a.num_accepted, b.num_accepted) and torch.equal(a.next_token, b.next_token)
    other = verify_chain(p, q, tokens, rnd.split(rnd.key(99), B), pm)
    assert not torch.equal(a.next_token, other.next_token)  # and the key matters


def test_row_output_does_not_depend_on_batch_companions():
    p, q, tokens, key, pm = inputs()
    full = verify_chain(p, q, tokens, key, pm)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(1))[: B // 3]
    part = verify_chain(p[perm], q[perm], tokens[perm], key[perm], pm[perm])
    assert torch.equal(full.num_accepted[perm], part.num_accepted)
    assert torch.equal(full.next_token[perm], part.next_token)
    single = verify_chain(p[7:8], q[7:8], tokens[7:8], key[7:8], pm[7:8])
    assert int(single.next_token) == int(full.next_token[7])


def test_compiled_equals_eager_bitwise():
    p, q, tokens, key, pm = inputs(3)
    logits = torch.log(p) * 1.3
    params = [
        SamplingParams(temperature=0.8, top_k=10),
        SamplingParams(temperature=1.0, top_p=0.9),
        SamplingParams(temperature=1.2, min_p=0.05),
        SamplingParams(temperature=0),
    ]
    st = SamplingTensors.from_params([params[i % 4] for i in range(B)])
    eager = pipeline(logits, st, q, tokens, key, pm)
    compiled = torch.compile(pipeline, fullgraph=True)(logits, st, q, tokens, key, pm)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "q": a["q"][:, :-1]}, "q must be"),
        (lambda a: {**a, "p": a["p"][..., :-1]}, "q must be"),
        (lambda a: {**a, "tokens": a["tokens"][:, :-1]}, "tokens must be"),
        (lambda a: {**a, "tokens": a["tokens"] + V}, "outside the vocabulary"),
        (lambda a: {**a, "tokens": a["tokens"] - V}, "outside the vocabulary"),
        (lambda a: {**a, "key": a["key"][:-1]}, "key must be"),
        (lambda a: {**a, "point_mass": a["point_mass"][:-1]}, "point_mass"),
        (lambda a: {**a, "p": a["p"][0]}, "p must be"),
    ],
)
def test_bad_verify_inputs_get_clear_errors(change, message):
    p, q, tokens, key, pm = inputs()
    args = change({"p": p, "q": q, "tokens": tokens, "key": key, "point_mass": pm})
    with pytest.raises(ValueError, match=message):
        verify_chain(**args)


def test_bad_saguaro_and_sample_inputs():
    q = torch.softmax(torch.randn(2, V), -1)
    with pytest.raises(ValueError, match="C must be in"):
        saguaro_q(q, 2, 0.0)
    with pytest.raises(ValueError, match="C must be in"):
        saguaro_q(q, 2, 1.5)
    with pytest.raises(ValueError, match="fan-out"):
        saguaro_q(q, -1, 0.5)
    with pytest.raises(ValueError, match="one key per distribution"):
        sample(q, rnd.split(rnd.key(0), 3))


def test_saguaro_scales_exactly_the_top_f_tokens():
    q = torch.tensor([[0.1, 0.4, 0.2, 0.3]], dtype=torch.float64)
    got = saguaro_q(q, 2, 0.5)
    want = torch.tensor([[0.1, 0.2, 0.2, 0.15]], dtype=torch.float64) / 0.65
    assert torch.allclose(got, want, atol=1e-15)
    assert torch.equal(saguaro_q(q, 2, 1.0), q / q.sum())
    one_hot = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(saguaro_q(one_hot, 3, 0.2), one_hot)  # greedy drafts are unchanged


def test_saguaro_top_f_breaks_ties_toward_lower_ids_eager_as_compiled():
    """Eager code picks the top-f tokens with a shallow top-k, traced code with a stable sort:
    the same tokens on rows full of ties, per-row fan-outs from 0 to past the vocabulary."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 4, (6, 2, 9), generator=g).double() + 0.1
    q[1] = 1.0  # all tied
    fanout = torch.tensor([0, 3, 1, 5, 9, 12])
    eager = saguaro_q(q, fanout, 0.5)
    compiled = torch.compile(saguaro_q, backend="eager", fullgraph=True)(q, fanout, 0.5)
    assert torch.equal(eager, compiled)
    ratio = eager / q  # c / sum(w) on the top-f tokens, 1 / sum(w) elsewhere
    scaled = ratio < 0.75 * ratio.amax(-1, keepdim=True)
    ranks = torch.sort(q, dim=-1, descending=True, stable=True).indices.argsort(-1)
    for i, f in enumerate(fanout.tolist()):
        assert torch.equal(scaled[i], ranks[i] < f if f < 9 else torch.zeros_like(scaled[i]))
    assert scaled[1, :, :3].all() and not scaled[1, :, 3:].any()  # ties: the lowest ids


@pytest.mark.parametrize("point_masses", [True, False])
@pytest.mark.parametrize("top_k", [0, 3])
def test_greedy_chain_is_verify_chain_on_greedy_rows(point_masses, top_k):
    """The greedy shortcut (argmax of the logits only) against the full verifier on one-hot
    rows: the same outcome for every row, whatever q the drafts came from and with ties."""
    g = torch.Generator().manual_seed(top_k)
    logits = torch.randint(0, 4, (B, K + 1, V), generator=g).to(torch.bfloat16)  # many ties
    best = logits.float().argmax(-1)
    # drafts agreeing with the argmax for a random number of positions, then anything
    agree = torch.arange(K) < torch.randint(0, K + 1, (B, 1), generator=g)
    tokens = torch.where(agree, best[:, :-1], torch.randint(0, V, (B, K), generator=g))
    q = None
    if not point_masses:  # any proposal with mass on each drafted token
        q = torch.softmax(torch.randn(B, K, V, generator=g), -1)
    st = SamplingTensors.from_params(SamplingParams(temperature=0.0, top_k=top_k), batch=B)
    keys = rnd.split(rnd.key(3), B)
    full = verify_chain(probs_from_logits(logits, st), q, tokens, keys, None)
    fast = greedy_chain(logits, tokens)
    assert torch.equal(fast.num_accepted, full.num_accepted)
    assert torch.equal(fast.next_token, full.next_token)
    assert set(full.num_accepted.tolist()) == set(range(K + 1))  # every outcome was exercised
