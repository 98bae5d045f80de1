"""Paged KV cache and attention: layout independence, decode == verify, masking, donation."""

from __future__ import annotations

import random
import re

import pytest
import torch

from helpers import CHECKPOINTS, random_tokens, rel_err
from ssd.kv import PageAllocator, alloc_kv_cache, pack_tokens, step_meta
from ssd.models import forward
from ssd.pytree import StaleStateError
from ssd.scoring import Scorer

NAMES = list(CHECKPOINTS)


def test_shuffled_pages_equal_in_order_pages_bitwise(models):
    model = models["llama3_scaled_gqa4_tied"]
    order = list(range(48))
    random.Random(0).shuffle(order)
    in_order, shuffled = (
        Scorer(model, batch=3, page_size=4),
        Scorer(model, batch=3, page_size=4, order=order),
    )
    prompts = [random_tokens(n, seed=n) for n in (5, 14, 9)]
    outs = [r.feed(prompts) for r in (in_order, shuffled)]
    for step in range(3):
        chunk = [[7 + step + b] for b in range(3)]
        outs += [r.feed(chunk) for r in (in_order, shuffled)]
    assert in_order.tables != shuffled.tables
    for a, b in zip(outs[0::2], outs[1::2], strict=True):
        for row_a, row_b in zip(a, b, strict=True):
            assert torch.equal(row_a, row_b)


@pytest.mark.parametrize("name", NAMES)
def test_verify_equals_one_by_one_decode(name, models):
    """(K+1) tokens in one forward vs one at a time, in the same shape bucket (Q, max_pages) and
    unpadded: only GEMM rounding may differ. (Not bitwise: MKL's result for a row can depend on
    its position in the block; measured on AMD EPYC: row i alone vs row i of 5 differ by 3e-5
    on a 576 x 1536 product, relative error of the logits <= 1.1e-6.)"""
    k = 4
    prefix, draft = random_tokens(9, seed=3), random_tokens(k + 1, seed=4)
    verify, bucketed, unpadded = (Scorer(models[name], batch=1, page_size=4) for _ in range(3))
    for r in (verify, bucketed, unpadded):
        r.feed([prefix], max_pages=8)
    [at_once] = verify.feed([draft], q_len=k + 1, max_pages=8)
    same_bucket = torch.cat([bucketed.feed([[t]], q_len=k + 1, max_pages=8)[0] for t in draft])
    single = torch.cat([unpadded.feed([[t]], max_pages=8)[0] for t in draft])
    assert rel_err(same_bucket, at_once) <= 5e-6
    assert rel_err(single, at_once) <= 5e-6
    for pages in ("k_pages", "v_pages"):  # the sink page aside
        got, want = getattr(bucketed.kv, pages)[:, :-1], getattr(verify.kv, pages)[:, :-1]
        assert rel_err(got, want) <= 5e-6


def test_masked_slots_contribute_exactly_nothing(models):
    """Large finite garbage in every slot a query may not see leaves the logits bitwise equal."""
    model = models["qwen3_tied"]
    clean, dirty = Scorer(model, batch=2, page_size=4), Scorer(model, batch=2, page_size=4)
    prompts = [random_tokens(6, seed=5), random_tokens(11, seed=6)]
    for r in (clean, dirty):
        r.feed(prompts, max_pages=6)
    ps, kv = dirty.page_size, dirty.kv
    visible = torch.zeros(kv.k_pages.shape[1] * ps, dtype=torch.bool)
    for table, n in zip(dirty.tables, dirty.lens, strict=True):
        for pos in range(n + 1):  # the prefix and the slot the next token writes
            visible[table[pos // ps] * ps + pos % ps] = True
    g = torch.Generator().manual_seed(0)
    for pages in (kv.k_pages, kv.v_pages):
        flat = pages.view(pages.shape[0], -1, *pages.shape[3:])
        garbage = 1e4 * torch.randn(flat[:, ~visible].shape, generator=g)
        flat[:, ~visible] = garbage
    assert (kv.k_pages.abs() > 100).any()
    a = clean.feed([[1], [2]], max_pages=6)
    b = dirty.feed([[1], [2]], max_pages=6)
    for row_a, row_b in zip(a, b, strict=True):
        assert torch.equal(row_a, row_b)


def test_padding_tokens_write_only_the_sink_page(models):
    model = models["llama"]
    r = Scorer(model, batch=2, page_size=4)
    r.feed([random_tokens(3, seed=7), random_tokens(9, seed=8)], q_len=12)
    ps, kv = r.page_size, r.kv
    written = torch.zeros(kv.k_pages.shape[1] * ps, dtype=torch.bool)
    for table, n in zip(r.tables, r.lens, strict=True):
        for pos in range(n):
            written[table[pos // ps] * ps + pos % ps] = True
    flat = kv.k_pages.view(kv.k_pages.shape[0], -1, *kv.k_pages.shape[3:])
    sink = torch.zeros_like(written)
    sink[kv.sink_page * ps :] = True
    assert (flat[:, written].abs().sum(-1) > 0).all()
    assert (flat[:, sink].abs().sum() > 0).item()  # 12 padding writes landed here
    assert (flat[:, ~written & ~sink] == 0).all()


def test_sequence_with_no_tokens_gives_finite_rows(models):
    model = models["llama_bias_gqa2"]
    prompt = random_tokens(7, seed=9)
    r = Scorer(model, batch=2, page_size=4)
    [with_empty, nothing] = r.feed([prompt, []])
    assert nothing.shape[0] == 0 and torch.isfinite(r.last_logits).all()
    [alone] = Scorer(model, batch=1, page_size=4).feed([prompt])
    assert rel_err(with_empty, alone) <= 5e-6


def test_reusing_a_consumed_kv_cache_raises(models):
    model = models["llama"]
    kv = alloc_kv_cache(model.cfg, num_pages=4, page_size=4)
    meta = step_meta([[0, 1]], [0], [5], page_size=4)
    tokens = pack_tokens([random_tokens(5, seed=10)])
    _, kv2 = forward(model.params, model.cfg, kv, tokens, meta)
    before = kv2.k_pages.clone()
    with pytest.raises(StaleStateError, match=re.escape("consumed by ssd.models.decoder.forward")):
        forward(model.params, model.cfg, kv, tokens, meta)
    assert torch.equal(kv2.k_pages, before)  # the refused call wrote nothing
    step = step_meta([[0, 1]], [5], [1], page_size=4)
    logits, kv3 = forward(model.params, model.cfg, kv2, pack_tokens([[3]]), step)
    assert torch.isfinite(logits).all() and kv3 is not kv2


def test_step_meta_layout_and_errors():
    alloc = PageAllocator(6, page_size=4, order=[5, 2, 0, 4, 1, 3])
    a, b = alloc.ensure([], 6), alloc.ensure([], 3)
    assert (a, b, alloc.num_free) == ([5, 2], [0], 3)
    # a verify of 3 tokens for seq 0 (6 cached) and a decode for seq 1 (2 cached)
    alloc.ensure(a, 9)
    meta = step_meta([a, b], [6, 2], [3, 1], page_size=4, q_len=4, max_pages=4)
    assert meta.positions.tolist() == [[6, 7, 8, 0], [2, 0, 0, 0]]
    assert meta.slot_mapping.tolist() == [[10, 11, 16, -1], [2, -1, -1, -1]]
    assert meta.block_tables.tolist() == [[5, 2, 4, -1], [0, -1, -1, -1]]
    assert meta.context_lens.tolist() == [9, 3] and meta.mask is None
    with pytest.raises(ValueError, match="covers 4 slots, the step needs 5"):
        step_meta([b], [2], [3], page_size=4)
    with pytest.raises(ValueError, match="q_len=2"):
        step_meta([a], [0], [3], page_size=4, q_len=2)
    alloc.release(b)
    assert b == [] and alloc.num_free == 3
