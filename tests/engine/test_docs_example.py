"""The research loop in docs/examples/sd_loop.py works and agrees with the engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ssd import LLM, SamplingParams
from ssd import random as rnd
from ssd.kv import alloc_kv_cache, step_meta
from ssd.models import load_model
from ssd.pytree import StaleStateError
from ssd.sampling import SamplingTensors

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


def test_the_documented_steps_refuse_a_consumed_cache(checkpoints):
    example = load_example()
    model = load_model(checkpoints["llama"])
    kv = alloc_kv_cache(model.cfg, 4, 16)
    st = SamplingTensors.from_params([SamplingParams(temperature=0)])
    args = (torch.tensor([[1, 2, 3]]), step_meta([[0]], [0], [3], 16), torch.tensor([2]), st)
    key = rnd.key(torch.tensor([0]))
    new_kv, _ = example.prefill_step(model.params, model.cfg, kv, *args, key)
    with pytest.raises(StaleStateError, match="consumed by decode_step"):
        example.prefill_step(model.params, model.cfg, kv, *args, key)
    example.prefill_step(model.params, model.cfg, new_kv, *args, key)  # its successor is live
