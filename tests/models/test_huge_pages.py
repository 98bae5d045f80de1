"""Weights on huge pages: aligned, equal to their source, alive as long as the tensor."""

from __future__ import annotations

import gc
import sys

import pytest
import torch

from ssd.models import huge_pages

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_HUGEPAGE is Linux's")


@linux
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8, torch.float32])
def test_a_large_tensor_starts_on_a_huge_page_and_keeps_its_values(dtype):
    src = torch.randn(3, 1024, 700).to(dtype)  # a few MB, not a multiple of a huge page
    out = huge_pages.move(src)
    assert out.data_ptr() % huge_pages.HUGE_PAGE == 0
    assert out.dtype == dtype and out.shape == src.shape and out.is_contiguous()
    del src
    gc.collect()  # the mapping lives as long as the tensor, not its Python wrapper
    out[1] = 7
    assert bool((out[1] == 7).all())


def test_a_small_tensor_is_a_plain_copy():
    src = torch.arange(10.0)
    out = huge_pages.move(src)
    assert torch.equal(out, src) and out.data_ptr() != src.data_ptr()


@linux
@pytest.mark.parametrize("tied", [False, True])
def test_loaded_streamed_weights_are_on_huge_pages(tied, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ssd.models import load_model
    from ssd.models.quantize import quantize_int8

    # Two layers whose gate/up/down stack to 4 MB in bf16 and a 2 MB head; q/k/v stay small.
    cfg = LlamaConfig(
        vocab_size=2048, hidden_size=512, intermediate_size=2048, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    bf16 = load_model(tmp_path, dtype=torch.bfloat16)
    p = bf16.params
    assert (p.lm_head is p.embed) == tied
    for w in (p.lm_head, p.layers["w_gate"], p.layers["w_up"], p.layers["w_down"]):
        assert w.data_ptr() % huge_pages.HUGE_PAGE == 0
    int8 = quantize_int8(bf16).params
    for w in (int8.layers["w_gate"], int8.layers["w_down"]):  # 2 MB in int8
        assert w.dtype == torch.int8 and w.data_ptr() % huge_pages.HUGE_PAGE == 0
