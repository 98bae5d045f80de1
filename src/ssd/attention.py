"""One paged attention for prefill, decode, verify and tree-branch decoding.

A boolean ``[B, Q, S]`` mask (S = max_pages * page_size slots of each sequence's block table)
decides what each query row sees. Every kind of step is the same call on the same kind of
operands; only the mask differs. On CPUs with the native kernels (`ssd.kernels`) each row reads
its visible slots through the block table in place, in fp32, alone: a token's output does not
depend on the step at all. Elsewhere each sequence's pages are gathered into a contiguous
``[B, S, H_kv, D]`` view for SDPA, and a token's output depends on the step only through the
shape bucket (B, Q, max_pages): in one bucket, decode and verify agree bitwise (docs/models.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssd.kernels import native_on
from ssd.kv import AttentionMeta


def attention_mask(meta: AttentionMeta, page_size: int) -> Tensor:
    """Boolean ``[B, 1, Q, S]`` mask (True = attend), built once per forward for all layers.

    Without an explicit mask, slot j of the gathered view holds logical position j, so causality
    is ``j <= position``. A row that may see nothing (batch padding) is given slot 0 so that
    softmax stays finite; its output is meaningless and must be ignored by the caller.
    """
    s = meta.block_tables.shape[1] * page_size
    slot = torch.arange(s, device=meta.positions.device)
    allowed = slot < meta.context_lens[:, None, None]
    if meta.mask is None:
        allowed = allowed & (slot <= meta.positions[:, :, None])
    else:
        allowed = allowed & meta.mask
    allowed = allowed | (~allowed.any(-1, keepdim=True) & (slot == 0))
    return allowed[:, None]


def gather_pages(pages: Tensor, block_tables: Tensor) -> Tensor:
    """One layer's pages ``[P + 1, page_size, H_kv, D]`` -> per-sequence ``[B, S, H_kv, D]``.

    Unused table entries (-1) read the sink page (last); the mask hides them.
    """
    sink = pages.shape[0] - 1
    tables = torch.where(block_tables >= 0, block_tables, sink)
    return pages[tables].flatten(1, 2)


def paged_attention(
    q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, mask: Tensor, scale: float
) -> Tensor:
    """Queries ``[B, Q, H, D]`` against one layer's paged K/V -> ``[B, Q, H, D]``.

    Masked slots get exactly zero weight; `mask` is `attention_mask`'s ``[B, 1, Q, S]``.
    """
    if native_on(q) and q.dtype in (torch.float32, torch.bfloat16):
        return torch.ops.ssd_cpu.paged_attention(q, k_pages, v_pages, block_tables, mask, scale)
    return gathered_attention(q, k_pages, v_pages, block_tables, mask, scale)


def gathered_attention(
    q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, mask: Tensor, scale: float
) -> Tensor:
    """The portable path: gather the pages, then SDPA (boolean mask -> -inf before softmax);
    grouped-query heads share K/V through `enable_gqa` instead of a materialised repeat."""
    k = gather_pages(k_pages, block_tables).transpose(1, 2)
    v = gather_pages(v_pages, block_tables).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k,
        v,
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[2] != k.shape[1],
    )
    return out.transpose(1, 2)
