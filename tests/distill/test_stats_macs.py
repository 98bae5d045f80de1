"""Acceptance bookkeeping on hand-made examples, and the MAC count against the weights."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ssd.engine.metrics import AcceptanceStats
from ssd_tools.distill.acceptance import rounds_from_matches
from ssd_tools.distill.macs import macs_per_token, macs_ratio


def test_rounds_from_matches_by_hand() -> None:
    # 10 target tokens, K = 3: rounds accept 3 (+1), then 1 (+1), then 0 (+1), then the last
    # 3 tokens all match: 3 accepted, no bonus left.
    m = [True, True, True, False, True, False, False, True, True, True]
    s = rounds_from_matches(m, 3, first=0)
    assert s.hist == [1, 1, 0, 2]
    assert (s.rounds, s.drafted, s.accepted, s.committed) == (4, 12, 7, 10)
    assert s.rate == pytest.approx(7 / 12)
    assert s.tau == pytest.approx(10 / 4)
    assert s.per_position() == pytest.approx([3 / 4, 2 / 4, 2 / 4])


def test_rounds_end_inside_a_round() -> None:
    s = rounds_from_matches([True, True], 4, first=0)  # ends after two matched tokens
    assert s.hist == [0, 0, 1, 0, 0] and s.committed == 2 and s.rate == pytest.approx(2 / 4)
    assert rounds_from_matches([], 4).rounds == 0


def test_the_prefill_token_is_not_drafted() -> None:
    # by default token 0 comes from the target's prefill: rounds start at token 1
    s = rounds_from_matches([False, True, True, False, True], 2)
    assert s.hist == [0, 1, 1] and s.committed == 4


def test_merge_refuses_other_k() -> None:
    with pytest.raises(ValueError, match="K=4"):
        AcceptanceStats(4).merge(AcceptanceStats(5))


def test_macs_equal_linear_weights() -> None:
    """At zero context a token costs one MAC per weight of every linear layer (LM head too)."""
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert macs_per_token(cfg).total == linear
    assert macs_per_token(cfg.to_dict()).total == linear
    ctx = macs_per_token(cfg, context=10)
    assert ctx.attention == 3 * 2 * 48 * 10


def test_smollm2_draft_ratio() -> None:
    target = dict(
        hidden_size=576,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        intermediate_size=1536,
        num_hidden_layers=30,
        vocab_size=49152,
    )
    m = macs_per_token(target)
    assert m.lm_head == 576 * 49152
    assert 134e6 < m.total < 135e6
    assert macs_ratio(dict(target, num_hidden_layers=3), target) < 0.3
    assert macs_ratio(dict(target, num_hidden_layers=4), target) > 0.3

    def linear_weights(layers: int) -> int:  # counted on the real module tree, no memory used
        with torch.device("meta"):
            cfg = LlamaConfig(**dict(target, num_hidden_layers=layers), tie_word_embeddings=True)
            model = LlamaForCausalLM(cfg)
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))

    assert m.total == linear_weights(30)
    assert macs_ratio(dict(target, num_hidden_layers=3), target) == linear_weights(3) / m.total


def test_committed_draft_fits_the_budget() -> None:
    """The committed draft's own config costs at most 0.3x SmolLM2-135M per token."""
    from ssd.prepare import default_draft_artifact, prepare_smollm2

    draft = json.loads((default_draft_artifact() / "draft.json").read_text())["config"]
    target = json.loads((prepare_smollm2(progress=False) / "config.json").read_text())
    assert draft["vocab_size"] == target["vocab_size"]
    assert macs_ratio(draft, target) <= 0.3
