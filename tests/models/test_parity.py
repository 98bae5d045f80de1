"""Logits parity with `transformers` (fp32, CPU): prefill, paged decode, ragged batches."""

from __future__ import annotations

import pytest
import torch

from helpers import CHECKPOINTS, random_tokens, rel_err
from ssd.scoring import Scorer

NAMES = list(CHECKPOINTS)
TOL = 1e-5  # max |diff| relative to the reference's max |logit|
# Same tokens in a different batch/shape: BLAS picks kernels by shape, so rounding differs
# (measured <= 1e-6; prefill against transformers is measured bitwise equal).
CROSS_SHAPE_TOL = 5e-6


@pytest.mark.parametrize("name", NAMES)
def test_prefill_matches_transformers(name, models, hf_logits):
    tokens = random_tokens(21, seed=1)
    [ours] = Scorer(models[name], batch=1, page_size=4).feed([tokens])
    ref = hf_logits(name, tokens)
    assert ours.shape == ref.shape == (21, 256)
    assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_decode_after_prefill_matches_transformers(name, models, hf_logits):
    tokens = random_tokens(20, seed=2)
    runner = Scorer(models[name], batch=1, page_size=4)
    rows = runner.feed([tokens[:6]])[0]
    steps = [runner.feed([[t]])[0] for t in tokens[6:]]
    ours = torch.cat([rows, *steps])
    assert runner.lens == [20]
    assert rel_err(ours, hf_logits(name, tokens)) <= TOL


@pytest.mark.parametrize("name", ["llama", "qwen3_tied"])
def test_ragged_batch_equals_each_sequence_alone(name, models):
    prompts = [random_tokens(n, seed=10 + n) for n in (3, 13, 7, 16)]
    batch = Scorer(models[name], batch=4, page_size=4)
    together = batch.feed(prompts)
    nxt = [random_tokens(2, seed=40 + b) for b in range(4)]
    together_decode = [batch.feed([[t[0]] for t in nxt]), batch.feed([[t[1]] for t in nxt])]
    for b, prompt in enumerate(prompts):
        alone = Scorer(models[name], batch=1, page_size=4)
        [ref] = alone.feed([prompt])
        assert rel_err(together[b], ref) <= CROSS_SHAPE_TOL
        for step in range(2):
            [ref_step] = alone.feed([[nxt[b][step]]])
            assert rel_err(together_decode[step][b], ref_step) <= CROSS_SHAPE_TOL


def test_llama3_scaling_changes_frequencies(models):
    """Guards the scaled checkpoint: its parity test would be vacuous if scaling were a no-op."""
    from dataclasses import replace

    from ssd.models.decoder import rope_inv_freq

    cfg = models["llama3_scaled_gqa4_tied"].cfg
    assert cfg.rope_scaling is not None
    scaled, plain = rope_inv_freq(cfg), rope_inv_freq(replace(cfg, rope_scaling=None))
    assert torch.equal(scaled, models["llama3_scaled_gqa4_tied"].params.inv_freq)
    assert (scaled != plain).sum() >= len(plain) // 2
