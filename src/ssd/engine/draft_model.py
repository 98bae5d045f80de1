"""The draft model's side of a round: its paged KV cache and the steps that draft on it.

`DraftModel` is the target's `TargetModel` twin; the drafters (`ssd.engine.drafters`) decide
what to draft, this class runs it: prompt prefill, K-step drafting, the glue pass along a sent
path and lock-step tree decoding over candidate branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ssd import saguaro
from ssd.engine.prefix_cache import PrefixCache
from ssd.engine.requests import Request
from ssd.engine.speculation import batch_inputs
from ssd.jit import Step, length_buckets, pow2
from ssd.kv import AttentionMeta, KVCache, pack_tokens, step_meta, tree_meta
from ssd.models.loading import Model
from ssd.steps import draft_step, fill_step, glue_step, tree_step


def draft_steps(jit: str) -> list[Step]:
    """Every step the draft runs: glue, fill (prefill), draft (K steps), tree."""
    fns = (glue_step, fill_step, draft_step, tree_step)
    return [Step(fn, jit, persistent=(0, 2), donate=2) for fn in fns]


class DraftModel:
    """The draft model with its KV pages and compiled steps; all calls take a batch of requests."""

    def __init__(
        self,
        model: Model,
        kv: KVCache,
        k: int,
        jit: str,
        max_len: int,
        extra: int,
        steps: Sequence[Any] | None = None,
        mesh: Any = None,
        prefix_caching: bool = False,
    ):
        """`steps` replace `draft_steps(jit)` (a sharded draft's, mirrored to its other ranks:
        `mesh`, a `TensorParallelModel` that `close` stops). With `prefix_caching` full prompt
        pages are shared by content, as in the target's cache (`ssd.engine.prefix_cache`)."""
        self.model, self.kv, self.k, self.max_len = model, kv, k, max_len
        self.mesh = mesh
        self.extra = extra  # scratch slots past the sequence (glue + tree branches)
        self.alloc = PrefixCache(kv.num_pages, kv.page_size, enabled=prefix_caching)
        self.pages: dict[int, list[int]] = {}
        self.cached: dict[int, int] = {}  # request id -> prompt tokens its shared pages hold
        # Batch-padding rows of tree steps write scratch KV somewhere: pages of their own.
        self.pad_table: list[int] = []
        self.alloc.extend(self.pad_table, extra)
        self.device = kv.k_pages.device
        s: list[Any] = list(steps or draft_steps(jit))
        self._forward, self._fill, self._draft, self._tree = s

    def close(self) -> None:
        if self.mesh is not None:
            self.mesh.close()

    def _tables(self, batch: Sequence[Request], b: int) -> tuple[list[list[int]], int]:
        tables = [self.pages[r.id] for r in batch] + [[]] * (b - len(batch))
        return tables, pow2(max(len(t) for t in tables))

    def admit(self, reqs: Sequence[Request]) -> None:
        """Take pages for new requests and prefill everything before their last token r (the
        prompt, and for a request taken over mid-run its committed tokens too)."""
        for r in reqs:
            need = min(r.length + r.params.max_tokens, self.max_len) + self.extra
            table: list[int] = []
            cached = self.alloc.acquire(table, r.prompt, need)
            if cached is None:
                raise RuntimeError(f"draft KV cache too small for request {r.id}: raise num_pages")
            self.pages[r.id], self.cached[r.id] = table, cached
        for q, rows in length_buckets([r.length - 1 - self.cached[r.id] for r in reqs]):
            self._prefill([reqs[i] for i in rows], q)
        for r in reqs:
            self.alloc.register(self.pages[r.id], r.prompt)

    def _prefill(self, reqs: Sequence[Request], q: int) -> None:
        b = pow2(len(reqs))
        tables, mp = self._tables(reqs, b)
        starts = [self.cached[r.id] for r in reqs] + [0] * (b - len(reqs))
        seqs = [r.context[s:] for r, s in zip(reqs, starts, strict=False)]
        seqs += [[]] * (b - len(reqs))
        meta = step_meta(
            tables,
            starts,
            [len(x) for x in seqs],
            self.kv.page_size,
            q_len=q,
            max_pages=mp,
            device=self.device,
        )
        tokens = pack_tokens(seqs, q).to(self.device)
        m = self.model
        self.kv = self._fill(m.params, m.cfg, self.kv, tokens, meta)

    def release(self, req: Request) -> None:
        self.alloc.release(self.pages.pop(req.id))
        del self.cached[req.id]

    def draft(
        self,
        batch: Sequence[Request],
        saguaro_f: Tensor | None,
        c: Tensor | None,
        stop_below: float | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Up to K drafted tokens [b, k] and their q rows [b, k, V] (None: greedy point masses).

        With `stop_below`, the round is drafted one call per token and ends early once every
        sequence's last drafted token had draft probability below it: a token the draft doubts
        is likely rejected, so the passes after it and their verification rows would likely be
        wasted. The stop reads only the draft's own probabilities, so verification stays exact.
        Without it (or at 0, which never stops), k = K in one call.
        """
        b, st, keys = batch_inputs(batch, self.device)
        pad = b - len(batch)
        tables, mp = self._tables(batch, b)
        ps = self.kv.page_size
        real, zeros = len(batch), [0] * pad

        def meta(offset: int, q: int) -> AttentionMeta:  # q tokens from position length + offset
            starts = [r.length + offset for r in batch] + zeros
            return step_meta(
                tables, starts, [q] * real + zeros, ps, q_len=q, max_pages=mp, device=self.device
            )

        metas = [meta(-2, 2)] + [meta(d - 1, 1) for d in range(1, self.k)]
        seqs = [(r.prompt + r.out)[-2:] for r in batch] + [[0, 0]] * pad
        tokens0 = torch.tensor(seqs, dtype=torch.int64, device=self.device)
        m = self.model
        if not stop_below:
            self.kv, tokens, q, _ = self._draft(
                m.params, m.cfg, self.kv, tokens0, metas, st, keys, saguaro_f, c
            )
            return tokens, q
        toks, qs, inp = [], [], tokens0
        for d in range(self.k):
            f = None if saguaro_f is None else saguaro_f[:, d : d + 1]
            self.kv, tok, q, conf = self._draft(
                m.params, m.cfg, self.kv, inp, metas[d : d + 1], st, keys, f, c
            )
            toks.append(tok)
            qs.append(q)
            inp = tok
            if bool((conf[:real, 0] < stop_below).all()):
                break
        return torch.cat(toks, 1), None if qs[0] is None else torch.cat(qs, 1)

    def glue(self, batch: Sequence[Request], path: Tensor) -> Tensor:
        """Draft logits g [b, k+1, V] along the sent path [r, s_1..s_k], k <= K (writes its
        draft KV)."""
        b, k1 = path.shape
        tables, mp = self._tables(batch, b)
        lens = [k1] * len(batch) + [0] * (b - len(batch))
        starts = [r.length - 1 for r in batch] + [0] * (b - len(batch))
        meta = step_meta(
            tables,
            starts,
            lens,
            self.kv.page_size,
            q_len=k1,
            max_pages=mp,
            device=self.device,
        )
        m = self.model
        self.kv, g = self._forward(m.params, m.cfg, self.kv, path, meta)
        return g

    def tree(
        self,
        batch: Sequence[Request],
        cands: saguaro.Candidates,
        saguaro_f: Tensor | None,
        c: Tensor | None,
        between: Callable[[], None] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """K tree-decode steps over all candidate branches: tokens [b, M, K], q [b, M, K, V]
        (None: greedy point masses). With `between`, one call per step, `between()` after each:
        the same tokens (a step's coins are keyed by its positions, not by its index)."""
        b, st, keys = batch_inputs(batch, self.device)
        tables, mp = self._tables(batch, b)
        tables = tables[: len(batch)] + [self.pad_table] * (b - len(batch))
        mp = max(mp, pow2(len(self.pad_table)))
        depths = cands.depth.tolist()
        prefix = [r.length - 1 for r in batch] + [0] * (b - len(batch))
        scratch = [p + self.k + 1 for p in prefix]
        m = len(depths[0])
        metas = [
            tree_meta(
                tables,
                prefix,
                depths,
                t,
                scratch,
                self.kv.page_size,
                q_len=m,
                max_pages=mp,
                device=self.device,
            )
            for t in range(self.k)
        ]
        mo = self.model
        if between is None:
            self.kv, tokens, q = self._tree(
                mo.params, mo.cfg, self.kv, cands.token, metas, st, keys, saguaro_f, c
            )
            return tokens, q
        toks, qs, inp = [], [], cands.token
        for d in range(self.k):
            f = None if saguaro_f is None else saguaro_f[:, d : d + 1]
            self.kv, tok, q = self._tree(
                mo.params, mo.cfg, self.kv, inp, metas[d : d + 1], st, keys, f, c
            )
            toks.append(tok)
            qs.append(q)
            inp = tok[:, :, 0]
            between()
        return torch.cat(toks, 2), None if qs[0] is None else torch.cat(qs, 2)
