"""The reference sampler and the exactness checkers themselves."""

import itertools

import pytest
import torch
from hypothesis import given

from ssd import SamplingParams, reference, testing
from ssd import random as rnd


def model(seed, vocab=4):
    def probs(prefix):
        g = torch.Generator().manual_seed(
            seed * 1000 + sum((i + 1) * t for i, t in enumerate(prefix))
        )
        return torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * 1.5, -1)

    return reference.TableModel.from_probs(vocab, probs)


def _transformed(probs: torch.Tensor, temperature: float, top_k: int) -> list[float]:
    """The sampling transform written out for distinct probabilities: p^(1/T) (a one-hot argmax
    at T = 0), all but the top_k largest zeroed, renormalized."""
    p = [float(x) for x in probs]
    if temperature == 0:
        best = max(range(len(p)), key=p.__getitem__)
        return [float(i == best) for i in range(len(p))]
    p = [x ** (1 / temperature) for x in p]
    if top_k:
        kept = sorted(range(len(p)), key=p.__getitem__)[-top_k:]
        p = [x if i in kept else 0.0 for i, x in enumerate(p)]
    return [x / sum(p) for x in p]


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 0), (1.3, 2), (0.0, 0)], ids=str)
def test_exact_law_matches_the_chain_rule_over_every_continuation(temperature, top_k):
    vocab, prefix, n = 4, (1, 2), 3
    raw = model(3, vocab)
    params = SamplingParams(temperature=temperature, top_k=top_k)
    want = {}
    for seq in itertools.product(range(vocab), repeat=n):
        prob = 1.0
        for i, token in enumerate(seq):
            prob *= _transformed(raw.logits(prefix + seq[:i]).exp(), temperature, top_k)[token]
        if prob > 0:
            want[seq] = prob
    got = reference.exact_law(raw, prefix, n, params)
    assert set(got) == set(want)  # exactly the continuations of positive probability
    testing.assert_laws_equal(got, want)


def test_plain_ar_sampler_follows_the_exact_law():
    m = model(1)
    params = SamplingParams(temperature=0.9, top_k=3)
    keys = rnd.split(rnd.key(5), 8_000)
    samples = [reference.sample_ar(m, (0,), 2, params, keys[i]) for i in range(len(keys))]
    testing.assert_follows(samples, reference.exact_law(m, (0,), 2, params))


def test_checkers_reject_wrong_laws():
    m, other = model(1), model(2)
    params = SamplingParams()
    want = reference.exact_law(m, (0,), 2, params)
    with pytest.raises(AssertionError, match="laws differ"):
        testing.assert_laws_equal(reference.exact_law(other, (0,), 2, params), want)
    keys = rnd.split(rnd.key(5), 3_000)
    wrong = [reference.sample_ar(other, (0,), 2, params, keys[i]) for i in range(len(keys))]
    with pytest.raises(AssertionError, match="do not follow"):
        testing.assert_follows(wrong, want)
    with pytest.raises(AssertionError, match="probability 0"):
        testing.assert_follows([(9, 9)], want)


def test_table_model_checks_its_shape():
    bad = reference.TableModel(3, lambda s: [0.0, 0.0])
    with pytest.raises(ValueError, match="expected"):
        bad.logits(())


@given(testing.distributions(7))
def test_distribution_strategy_gives_distributions(p):
    assert p.shape == (7,) and (p >= 0).all() and abs(p.sum().item() - 1) < 1e-12
