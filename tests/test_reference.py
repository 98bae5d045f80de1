"""The reference sampler and the exactness checkers themselves."""

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


@given(testing.table_models(5), testing.sampling_params(5))
def test_exact_law_is_a_distribution_over_the_support(m, params):
    law = reference.exact_law(m, (1, 2), 3, params)
    assert abs(sum(law.values()) - 1) < 1e-12
    assert all(p > 0 and len(s) == 3 for s, p in law.items())


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
