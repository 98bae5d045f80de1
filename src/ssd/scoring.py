"""Teacher-forced logits: a model on its own paged cache, fed token chunks, every position scored.

The engine's loops sample on the device and keep only the tokens. Callers that want the logits
themselves (acceptance scoring, distillation's teacher, parity tests, research code) use a
`Scorer`: rows of sequences that grow as chunks are fed, each forward returning the logits of
every fed position. `score(model, tokens)` is the one-sequence case.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float

from ssd.kv import KVCache, PageAllocator, alloc_kv_cache, pack_tokens, step_meta
from ssd.models import Model, forward


class Scorer:
    """`batch` sequences (rows) on one paged cache; row b holds `lens[b]` tokens in the pages
    `tables[b]`. Pages are taken as rows grow and returned by `reset`."""

    def __init__(
        self,
        model: Model,
        batch: int,
        num_pages: int = 48,
        page_size: int = 16,
        order: Sequence[int] | None = None,
    ):
        self.model = model
        dtype = model.params.embed.dtype
        device = model.params.embed.device
        self.kv: KVCache = alloc_kv_cache(model.cfg, num_pages, page_size, dtype, device)
        self.alloc = PageAllocator(num_pages, page_size, order)
        self.tables: list[list[int]] = [[] for _ in range(batch)]
        self.lens = [0] * batch

    @property
    def page_size(self) -> int:
        return self.kv.page_size

    @torch.no_grad()
    def feed_rows(
        self,
        rows: Sequence[int],
        chunks: Sequence[Sequence[int]],
        q_len: int | None = None,
        max_pages: int | None = None,
    ) -> Float[torch.Tensor, "rows q vocab"]:
        """Append `chunks[i]` to row `rows[i]` in one forward; returns logits [rows, Q, V] (row
        i's first len(chunks[i]) positions are its chunk's; the rest is padding)."""
        for b, chunk in zip(rows, chunks, strict=True):
            self.alloc.ensure(self.tables[b], self.lens[b] + len(chunk))
        meta = step_meta(
            [self.tables[b] for b in rows],
            [self.lens[b] for b in rows],
            [len(c) for c in chunks],
            self.page_size,
            q_len=q_len,
            max_pages=max_pages,
            device=self.kv.k_pages.device,
        )
        tokens = pack_tokens(chunks, meta.positions.shape[1]).to(self.kv.k_pages.device)
        logits, self.kv = forward(self.model.params, self.model.cfg, self.kv, tokens, meta)
        for b, chunk in zip(rows, chunks, strict=True):
            self.lens[b] += len(chunk)
        return logits

    def feed(
        self,
        chunks: Sequence[Sequence[int]],
        q_len: int | None = None,
        max_pages: int | None = None,
    ) -> list[torch.Tensor]:
        """Append `chunks[b]` to every row b in one forward; returns each chunk's logits."""
        logits = self.feed_rows(range(len(self.tables)), chunks, q_len, max_pages)
        self.last_logits = logits
        return [logits[b, : len(c)] for b, c in enumerate(chunks)]

    def reset(self, row: int) -> None:
        """Empty a row and return its pages."""
        self.alloc.release(self.tables[row])
        self.tables[row], self.lens[row] = [], 0


def score(
    model: Model, tokens: Sequence[int], page_size: int = 16
) -> Float[torch.Tensor, "n vocab"]:
    """The logits after each prefix of `tokens` in one forward: row i scores token i + 1."""
    scorer = Scorer(model, 1, num_pages=-(-len(tokens) // page_size), page_size=page_size)
    [logits] = scorer.feed([tokens])
    return logits
