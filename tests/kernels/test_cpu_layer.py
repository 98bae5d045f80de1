"""The fused native decoder layer against the op-by-op layer, and its batch invariance."""

from __future__ import annotations

import pytest
import torch

import ssd.kernels
from helpers import random_tokens, rel_err
from ssd import LLM, SamplingParams
from ssd.kernels import cpu_kernels_available
from ssd.models import load_model
from ssd.models.quantize import quantize_int8
from ssd.scoring import Scorer

pytestmark = pytest.mark.skipif(
    not cpu_kernels_available(), reason="needs an x86 CPU with AVX2 and a C++ compiler"
)
# every family the fused layer serves (Qwen3's q/k norms take the op-by-op path)
NAMES = ["llama", "llama3_scaled_gqa4_tied", "llama_bias_gqa2", "qwen2"]


def _feed_all(model, fused: bool, monkeypatch) -> tuple[list[torch.Tensor], Scorer]:
    monkeypatch.setattr(ssd.kernels, "FUSED_LAYERS", fused)
    r = Scorer(model, batch=2, page_size=4)
    outs = r.feed([random_tokens(9, seed=1), random_tokens(4, seed=2)])  # prefill, uneven
    outs += r.feed([random_tokens(5, seed=3), random_tokens(5, seed=4)])  # a verification
    outs += r.feed([[7], [9]])  # a decode step
    return outs, r


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("int8", [False, True])
def test_fused_layer_matches_op_by_op(name, int8, checkpoints, monkeypatch):
    model = load_model(checkpoints[name], dtype=torch.bfloat16)
    model = quantize_int8(model) if int8 else model
    fused, r_fused = _feed_all(model, True, monkeypatch)
    plain, r_plain = _feed_all(model, False, monkeypatch)
    for a, b in zip(fused, plain, strict=True):
        assert rel_err(a, b) <= 3e-2  # bf16 roundings of the same values, sums in another order
    assert rel_err(r_fused.kv.k_pages.float(), r_plain.kv.k_pages.float()) <= 3e-2
    assert rel_err(r_fused.kv.v_pages.float(), r_plain.kv.v_pages.float()) <= 3e-2


@pytest.mark.parametrize("name", ["llama_bias_gqa2", "qwen2"])
def test_fused_verification_equals_one_by_one_decode_bitwise(name, checkpoints):
    model = load_model(checkpoints[name], dtype=torch.bfloat16)
    prefix, draft = random_tokens(9, seed=3), random_tokens(5, seed=4)
    verify, decode = Scorer(model, batch=1, page_size=4), Scorer(model, batch=1, page_size=4)
    verify.feed([prefix])
    decode.feed([prefix], max_pages=8)  # another page bucket too
    [at_once] = verify.feed([draft])
    one_by_one = torch.cat([decode.feed([[t]], max_pages=8)[0] for t in draft])
    assert torch.equal(at_once, one_by_one)


def test_bf16_greedy_sd_equals_ar_through_the_fused_layer(checkpoints):
    path = checkpoints["qwen2"]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompts = [random_tokens(n, seed=n) for n in (5, 11, 3)]
    runs = [
        LLM(path, mode="ar", dtype="bfloat16", max_batch=4),
        LLM(path, draft=path, mode="sd", k=3, dtype="bfloat16", draft_dtype="int8", max_batch=4),
    ]
    ar, sd = ([o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)] for llm in runs)
    assert sd == ar
