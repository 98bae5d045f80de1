"""Paged KV cache state, per-step attention metadata, and host-side builders for that metadata.

Device side (pytrees, traced): :class:`KVCache` holds the pages of every layer,
``[L, num_pages + 1, page_size, H_kv, D]``; the extra last page is a *sink* that absorbs the
writes of padding tokens (slot -1), so a write never needs a data-dependent shape.
:class:`AttentionMeta` says, for one step, where each query token sits (RoPE position), where its
K/V goes (flat slot = page * page_size + offset), which pages each sequence owns, and what each
query may attend to.

Host side (plain Python, mutable bookkeeping): :class:`PageAllocator` hands out pages;
:func:`step_meta` covers prefill, chunked prefill, decode and verify (a run of consecutive
positions per sequence); :func:`tree_meta` covers lock-step tree-branch decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ssd.pytree import pytree_dataclass

if TYPE_CHECKING:
    from ssd.models.config import ModelConfig


@pytree_dataclass
class KVCache:
    """K and V pages for all layers: ``[L, num_pages + 1, page_size, H_kv, D]`` each.

    Written in place by the forward, which consumes its input cache (``ssd.pytree.donate``).
    """

    k_pages: Tensor
    v_pages: Tensor

    @property
    def page_size(self) -> int:
        return self.k_pages.shape[2]

    @property
    def num_pages(self) -> int:
        """Usable pages (the sink page is not counted and never appears in a block table)."""
        return self.k_pages.shape[1] - 1

    @property
    def sink_page(self) -> int:
        return self.k_pages.shape[1] - 1


def kv_cache_bytes(cfg: ModelConfig, num_pages: int, page_size: int, dtype: torch.dtype) -> int:
    """What `alloc_kv_cache` will take, to check before allocating."""
    slots = cfg.num_hidden_layers * (num_pages + 1) * page_size
    return 2 * slots * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize


def alloc_kv_cache(
    cfg: ModelConfig,
    num_pages: int,
    page_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> KVCache:
    """Zeroed pages: a masked slot must hold a finite value (0 * NaN is NaN), so not `empty`."""
    shape = (cfg.num_hidden_layers, num_pages + 1, page_size, cfg.num_key_value_heads, cfg.head_dim)
    return KVCache(
        torch.zeros(shape, dtype=dtype, device=device),
        torch.zeros(shape, dtype=dtype, device=device),
    )


def write_kv(kv: KVCache, layer: int, k: Tensor, v: Tensor, slot_mapping: Tensor) -> None:
    """Write new keys/values ``[B, Q, H_kv, D]`` of `layer` at flat slots ``[B, Q]`` in place.

    Padding tokens (slot -1) all go to the sink page, which no block table references.
    """
    slots = torch.where(slot_mapping >= 0, slot_mapping, kv.sink_page * kv.page_size).flatten()
    for pages, new in ((kv.k_pages, k), (kv.v_pages, v)):
        flat = pages[layer].view(-1, *pages.shape[-2:])
        flat.index_copy_(0, slots, new.flatten(0, 1).to(pages.dtype))


@pytree_dataclass
class AttentionMeta:
    """Where the B x Q (padded) query tokens of one step go and what they see.

    positions    [B, Q] int64  logical RoPE position of each token.
    slot_mapping [B, Q] int64  flat physical slot for its K/V; -1 for padding (not written).
    block_tables [B, max_pages] int64  physical pages of each sequence in logical order; -1 pads.
    context_lens [B] int64     slots each sequence may attend to after this step's write.
    mask         [B, Q, max_pages * page_size] bool or None.  None: causal by position (slot j of
                 the gathered view holds logical position j). Given: the explicit set of slots
                 each query sees (tree branches), still limited to `context_lens`.
    """

    positions: Tensor
    slot_mapping: Tensor
    block_tables: Tensor
    context_lens: Tensor
    mask: Tensor | None = None


class PageAllocator:
    """Host-side free list of physical pages; `order` fixes the hand-out order."""

    def __init__(self, num_pages: int, page_size: int, order: Sequence[int] | None = None):
        self.page_size = page_size
        self._free = list(reversed(range(num_pages) if order is None else order))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def ensure(self, table: list[int], length: int) -> list[int]:
        """Append pages to `table` until it covers `length` slots; returns `table`."""
        while len(table) * self.page_size < length:
            if not self._free:
                raise RuntimeError(f"out of KV pages: need {length} slots, table holds {table}")
            table.append(self._free.pop())
        return table

    def release(self, table: list[int]) -> None:
        self._free.extend(reversed(table))
        table.clear()


def step_meta(
    tables: Sequence[Sequence[int]],
    starts: Sequence[int],
    lens: Sequence[int],
    page_size: int,
    *,
    q_len: int | None = None,
    max_pages: int | None = None,
    device: str | torch.device = "cpu",
) -> AttentionMeta:
    """Metadata for feeding `lens[b]` consecutive tokens at positions ``starts[b]...`` per sequence.

    Prefill: ``starts=0, lens=prompt_lens``; decode: ``starts=cur_lens, lens=1``; verify:
    ``starts=cur_lens, lens=K+1``; chunked prefill / prefix-cache hit: ``starts=cached``.
    `q_len` / `max_pages` pad Q and the block tables to a shape bucket; runs in the same bucket
    give bitwise-identical logits for the same token (see docs/models.md).
    """
    positions = [list(range(s, s + n)) for s, n in zip(starts, lens, strict=True)]
    context = [s + n for s, n in zip(starts, lens, strict=True)]
    return _build(tables, positions, positions, context, None, page_size, q_len, max_pages, device)


def tree_meta(
    tables: Sequence[Sequence[int]],
    prefix_lens: Sequence[int],
    depths: Sequence[Sequence[int]],
    step: int,
    scratch_starts: Sequence[int],
    page_size: int,
    *,
    starts: Sequence[Sequence[int]] | None = None,
    q_len: int | None = None,
    max_pages: int | None = None,
    device: str | torch.device = "cpu",
) -> AttentionMeta:
    """Metadata for step `step` (0-based) of lock-step decoding of tree branches.

    Sequence b has `prefix_lens[b]` committed slots followed by its glue tokens (glue j at slot
    ``prefix_lens[b] + j``). Its branch i forks after glue depth ``depths[b][i]``: at step t it
    feeds its t-th token at position ``prefix_len + depth + 1 + t``, writes it to scratch slot
    ``scratch_starts[b] + t * n_b + i`` (n_b branches) and attends to the prefix, glue 0..depth
    and its own scratch slots of steps 0..t. `tables[b]` must cover the scratch region.

    A branch with start 1 (`starts[b][i]`; default 0) forks after the last glue token, whose KV
    is not written yet: it decodes one step later, and in step 0 feeds that glue token at its
    position ``prefix_len + depth``. The sequence's first such branch (its lead) writes it to its
    glue slot and sees the glue before it; the others write their own scratch slot (a copy whose
    output is dropped), so that from step 1 on every branch sees the whole glue.
    """
    positions, slots, allowed, context = [], [], [], []
    for b, (p, ds, s0) in enumerate(zip(prefix_lens, depths, scratch_starts, strict=True)):
        n = len(ds)
        first = [0] * n if starts is None else list(starts[b])
        lead = first.index(1) if 1 in first else -1
        pos, slot, allow = [], [], []
        for i, (d, start) in enumerate(zip(ds, first, strict=True)):
            scratch = s0 + step * n + i
            if step >= start:
                pos.append(p + d + 1 + step - start)
                slot.append(scratch)
                allow.append((p + d + 1, [s0 + t * n + i for t in range(start, step + 1)]))
            elif i == lead:
                pos.append(p + d)
                slot.append(p + d)
                allow.append((p + d + 1, []))
            else:
                pos.append(p + d)
                slot.append(scratch)
                allow.append((p + d, [scratch]))
        positions.append(pos)
        slots.append(slot)
        allowed.append(allow)
        context.append(s0 + (step + 1) * n)
    return _build(tables, positions, slots, context, allowed, page_size, q_len, max_pages, device)


def pack_tokens(seqs: Sequence[Sequence[int]], q_len: int | None = None, pad: int = 0) -> Tensor:
    """Right-pad token lists into a ``[B, Q]`` int64 tensor (pad tokens must have slot -1)."""
    q = max(len(s) for s in seqs) if q_len is None else q_len
    return torch.tensor([list(s) + [pad] * (q - len(s)) for s in seqs], dtype=torch.int64)


def _build(
    tables: Sequence[Sequence[int]],
    positions: list[list[int]],
    logical_slots: list[list[int]],
    context_lens: list[int],
    allowed: list[list[tuple[int, list[int]]]] | None,
    page_size: int,
    q_len: int | None,
    max_pages: int | None,
    device: str | torch.device,
) -> AttentionMeta:
    q = max(len(p) for p in positions) if q_len is None else q_len
    mp = max(len(t) for t in tables) if max_pages is None else max_pages
    if any(len(p) > q for p in positions) or any(len(t) > mp for t in tables):
        raise ValueError(f"a sequence needs more than q_len={q} tokens or max_pages={mp} pages")
    slots = []
    for b, (table, row) in enumerate(zip(tables, logical_slots, strict=True)):
        if context_lens[b] > len(table) * page_size:
            raise ValueError(
                f"sequence {b}: block table {list(table)} covers {len(table) * page_size} slots, "
                f"the step needs {context_lens[b]}"
            )
        phys = [table[s // page_size] * page_size + s % page_size for s in row]
        slots.append(phys + [-1] * (q - len(row)))
    mask = None
    if allowed is not None:
        mask = torch.zeros(len(tables), q, mp * page_size, dtype=torch.bool)
        for b, rows in enumerate(allowed):  # per query: a visible prefix [0, n) plus extra slots
            for i, (n, extra) in enumerate(rows):
                mask[b, i, :n] = True
                mask[b, i, extra] = True

    def t(x: object) -> Tensor:
        return torch.tensor(x, dtype=torch.int64, device=device)

    return AttentionMeta(
        positions=t([p + [0] * (q - len(p)) for p in positions]),
        slot_mapping=t(slots),
        block_tables=t([list(tb) + [-1] * (mp - len(tb)) for tb in tables]),
        context_lens=t(context_lens),
        mask=None if mask is None else mask.to(device),
    )
