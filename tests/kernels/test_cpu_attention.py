"""The native paged attention against the portable gather + SDPA path, and its row independence."""

from __future__ import annotations

import random

import pytest
import torch

from ssd.attention import attention_mask, gathered_attention
from ssd.kernels import cpu_kernels_available, prepare
from ssd.kv import step_meta, tree_meta

pytestmark = pytest.mark.skipif(
    not cpu_kernels_available(), reason="needs an x86 CPU with AVX2 and a C++ compiler"
)
PAGE = 4


def _native(q, kp, vp, meta, scale=0.3):
    prepare()
    mask = attention_mask(meta, PAGE)
    return torch.ops.ssd_cpu.paged_attention(q, kp, vp, meta.block_tables, mask, scale)


def _pages(n: int, hkv: int, d: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = (n + 1, PAGE, hkv, d)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize(("h", "hkv", "d"), [(4, 4, 16), (6, 2, 20), (8, 1, 64)])
def test_matches_gathered_sdpa_on_causal_steps(h, hkv, d):
    kp, vp = _pages(12, hkv, d, seed=h + d)
    tables = [[7, 2, 9], [0, 4], [11]]  # shuffled pages, uneven lengths, one padding row below
    meta = step_meta([*tables, []], [6, 3, 0, 0], [4, 5, 2, 0], PAGE, q_len=5, max_pages=4)
    q = torch.randn(4, 5, h, d, generator=torch.Generator().manual_seed(1))
    got = _native(q, kp, vp, meta)
    want = gathered_attention(q, kp, vp, meta.block_tables, attention_mask(meta, PAGE), 0.3)
    # padding rows (no visible slot but slot 0) are meaningless on both paths: compare the rest
    live = torch.tensor([[i < n for i in range(5)] for n in (4, 5, 2, 0)])
    torch.testing.assert_close(got[live], want[live], rtol=1e-5, atol=1e-5)


def test_matches_gathered_sdpa_on_tree_masks():
    kp, vp = _pages(10, 2, 16, seed=3)
    tables = [[3, 8, 1, 6], [5, 0, 9]]
    # step 1 of tree decoding: branches fork after glue depths 0..2 and see their own scratch
    meta = tree_meta(tables, [5, 3], [[0, 1, 2], [0, 2]], 1, [9, 7], PAGE, max_pages=4)
    q = torch.randn(2, 3, 4, 16, generator=torch.Generator().manual_seed(2))
    got = _native(q, kp, vp, meta)
    want = gathered_attention(q, kp, vp, meta.block_tables, attention_mask(meta, PAGE), 0.3)
    live = torch.tensor([[True] * 3, [True, True, False]])
    torch.testing.assert_close(got[live], want[live], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_does_not_depend_on_its_step(dtype):
    """Bitwise: one query alone, as one of five, beside other sequences, in a wider page bucket."""
    kp, vp = _pages(16, 2, 32, seed=4, dtype=dtype)
    q = torch.randn(3, 5, 4, 32, generator=torch.Generator().manual_seed(3)).to(dtype)
    tables = [[4, 9, 1], [12, 3], [6, 0, 15]]
    together = _native(q, kp, vp, step_meta(tables, [6, 2, 4], [5, 5, 5], PAGE, max_pages=4))
    for b in range(3):
        for i in range(5):
            pages = random.Random(b * 5 + i).choice([3, 8])
            meta = step_meta([tables[b]], [[6, 2, 4][b] + i], [1], PAGE, max_pages=pages)
            alone = _native(q[b : b + 1, i : i + 1], kp, vp, meta)
            assert torch.equal(alone[0, 0], together[b, i]), (b, i)


def test_a_row_does_not_depend_on_the_threads_sharing_its_head():
    """Bitwise: one sequence's rows computed by one task, and split among eight threads' tasks."""
    kp, vp = _pages(16, 2, 32, seed=5, dtype=torch.bfloat16)
    q = torch.randn(1, 5, 4, 32, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    meta = step_meta([[4, 9, 1]], [6], [5], PAGE, max_pages=4)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 8):
            torch.set_num_threads(threads)
            outs.append(_native(q, kp, vp, meta))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])
