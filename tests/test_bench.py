"""`ssd bench`'s bookkeeping: bytes per forward, ceilings, the table (no timing asserted)."""

from __future__ import annotations

import argparse
import time

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


def test_ceilings_follow_the_bytes_of_each_mode_and_its_cores():
    both, first = {0, 1}, {0}
    placement = {"ar": both, "sd": both, "sd-target-cores": first, "ssd": first, "hf": both}
    modes = [bench.Mode(name, lambda p, n: None, cores) for name, cores in placement.items()]
    result = {"modes": {name: {} for name in placement}}
    for name in ("sd", "sd-target-cores", "ssd"):
        result["modes"][name]["metrics"] = {"mean_accepted_length": 3.0}
    # SD on the target cores stopped its rounds early: 2 passes a round instead of K = 4
    result["modes"]["sd-target-cores"]["metrics"]["drafted_per_round"] = 2.0
    gb_s = 1e-9  # bandwidths in GB/s: one core 300 B/s, both 600
    bench.ceilings(modes, result, b_target=300, b_draft=50, k=4, bw={1: 300 * gb_s, 2: 600 * gb_s})
    rows = result["modes"]
    assert rows["ar"]["ceiling_tok_s"] == pytest.approx(2.0)  # 600 B/s over 300 B a token
    assert rows["hf"]["ceiling_tok_s"] == rows["ar"]["ceiling_tok_s"]
    assert rows["sd"]["ceiling_tok_s"] == pytest.approx(3 * 600 / (4 * 50 + 300))
    assert rows["sd-target-cores"]["ceiling_tok_s"] == pytest.approx(3 * 300 / (2 * 50 + 300))
    # SSD: the target verifies 300 B on one core (1 s) while the draft streams 4 x 50 B on the
    # other (0.67 s), 500 B over the shared bus (0.83 s): the target's core sets the round
    assert rows["ssd"]["ceiling_tok_s"] == pytest.approx(3 / 1.0)
    assert rows["sd"]["model_x_ar"] == pytest.approx((300 / 600) / ((4 * 50 + 300) / 600 / 3))
    # an 80 B draft: its K passes a round (the tree steps; the glue comes carried) take 1.07 s
    # on its core, longer than the verification
    bench.ceilings(modes, result, b_target=300, b_draft=80, k=4, bw={1: 300 * gb_s, 2: 600 * gb_s})
    assert rows["ssd"]["ceiling_tok_s"] == pytest.approx(3 / (4 * 80 / 300))


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
    assert bench.main(["--draft-stop", "1.5"]) == 2
    assert "--draft-stop" in capsys.readouterr().err


def test_each_runner_times_decoding_from_its_first_generated_token(checkpoints):
    """Prefill stays out: the time a runner reports starts at its first token, so it is
    positive and shorter than the whole call (a streamer that never fired would not be)."""
    from transformers import AutoModelForCausalLM

    from ssd import LLM

    path = checkpoints["llama"]
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    sd = LLM(path, draft=path, mode="sd", k=2, max_batch=1, draft_stop=0.5)
    runners = {"hf": bench._hf_runner(hf, 0.0), "sd": bench._ssd_runner(sd, 0.0)[0]}
    for name, run in runners.items():
        start = time.perf_counter()
        decode = run([1, 2, 3, 4] * 8, 6)
        assert 0 < decode < time.perf_counter() - start, name


def test_target_and_draft_go_together():
    args = argparse.Namespace(target="a", draft=None, pair="smollm2")
    with pytest.raises(ValueError, match="go together"):
        bench._pair(args)
