"""The research loop in docs/examples/sd_loop.py works and agrees with the engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ssd import LLM, SamplingParams

EXAMPLE = Path(__file__).parents[2] / "docs/examples/sd_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("sd_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documented_loop_gives_the_engine_s_tokens(checkpoints):
    example = load_example()
    target, draft = checkpoints["llama"], checkpoints["llama_bias_gqa2"]
    prompt = [5, 17, 99, 3, 250]
    for params in (
        SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
        SamplingParams(temperature=0.9, top_k=50, seed=11, max_tokens=40, ignore_eos=True),
    ):
        got = example.speculative_generate(target, draft, prompt, 40, params, k=3, seed=11)
        want = LLM(target, draft=draft, mode="sd", k=3, max_batch=1).generate(
            prompt, params, use_tqdm=False
        )
        assert got == want[0].token_ids
