"""`ssd bench`'s bookkeeping: bytes per forward, ceilings, the table (no timing asserted)."""

from __future__ import annotations

import argparse

import pytest

from ssd import bench
from ssd.models.quantize import quantize_int8


def test_weight_bytes_counts_every_weight_but_the_input_embedding(models):
    m = models["qwen2"]  # untied head
    p = m.params
    every = sum(t.numel() * t.element_size() for t in [*p.layers.values(), p.final_norm])
    assert bench.weight_bytes(m) == every + p.lm_head.numel() * 4
    tied = models["qwen3_tied"]
    assert tied.params.lm_head is tied.params.embed
    assert bench.weight_bytes(tied) > tied.params.embed.numel() * 4  # the head is read in full


def test_int8_weights_stream_about_a_quarter_of_fp32(models):
    m = models["qwen2"]
    ratio = bench.weight_bytes(quantize_int8(m)) / bench.weight_bytes(m)
    assert 0.25 < ratio < 0.35  # int8 matrices plus fp32 scales, norms and biases


def test_ceilings_follow_the_bytes_of_each_mode():
    modes = [bench.Mode(name, lambda p, n: None, {0}) for name in ("ar", "sd", "ssd", "hf")]
    result = {
        "modes": {
            "ar": {},
            "sd": {"metrics": {"mean_accepted_length": 3.0}},
            "ssd": {"metrics": {"mean_accepted_length": 3.0}},
            "hf": {},
        }
    }
    bench.ceilings(modes, result, b_target=300, b_draft=50, k=4, bw=1e-9 * 600)
    rows = result["modes"]
    assert rows["ar"]["ceiling_tok_s"] == pytest.approx(2.0)  # 600 B/s over 300 B a token
    assert rows["sd"]["bytes_per_token"] == pytest.approx((4 * 50 + 300) / 3)
    assert rows["ssd"]["bytes_per_token"] == pytest.approx((5 * 50 + 300) / 3)
    assert rows["sd"]["model_x_ar"] == pytest.approx(300 / ((4 * 50 + 300) / 3))
    assert rows["hf"]["ceiling_tok_s"] == rows["ar"]["ceiling_tok_s"]


def test_the_table_shows_every_mode_and_its_ratios():
    result = {
        "prompts": 2, "max_tokens": 8, "temperature": 0.0, "k": 4, "dtype": "bfloat16",
        "draft_dtype": "int8", "cores": 2, "repeats": 2, "bandwidth_gb_s": 20.0,
        "target_bytes": 3e9, "draft_bytes": 5e8,
        "modes": {
            "hf": {"label": "transformers generate", "median": 5.0, "spread": 0.1, "x_hf": 1.0},
            "sd": {
                "label": "ssd SD", "median": 7.5, "spread": 0.2, "x_hf": 1.5,
                "ceiling_tok_s": 15.0, "model_x_ar": 1.8,
                "metrics": {"acceptance_rate": 0.5, "mean_accepted_length": 3.0},
            },
        },
    }  # fmt: skip
    lines = bench.table(result).splitlines()
    sd = next(line for line in lines if line.startswith("ssd SD"))
    assert "7.50" in sd and "1.50" in sd and "50%" in sd and "3.000" in sd
    assert any(line.startswith("transformers generate") for line in lines)


def test_bad_arguments_are_refused_before_anything_loads(capsys):
    assert bench.main(["--modes", "ar,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert bench.main(["--max-tokens", "1"]) == 2


def test_target_and_draft_go_together():
    args = argparse.Namespace(target="a", draft=None, pair="smollm2")
    with pytest.raises(ValueError, match="go together"):
        bench._pair(args)
