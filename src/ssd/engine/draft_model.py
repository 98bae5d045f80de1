"""The draft model's side of a round: its paged KV cache and the steps that draft on it.

`DraftModel` is the target's `TargetModel` twin; the drafters (`ssd.engine.drafters`) decide
what to draft, this class runs it: prompt prefill, K-step drafting, the glue pass along a sent
path, lock-step tree decoding over candidate branches, and moving a sent branch's KV home.
"""

from __future__ import annotations

import dataclasses
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
from ssd.steps import draft_step, fill_step, glue_step, late_candidates, move_step, tree_step


def draft_steps(jit: str) -> list[Step]:
    """Every step the draft runs: glue, fill (prefill), draft (K steps), tree, move (KV)."""
    fns = (glue_step, fill_step, draft_step, tree_step, move_step)
    return [Step(fn, jit, persistent=(0, 2), donate=2) for fn in fns]


@dataclasses.dataclass
class Tree:
    """What a tree decode over M branches of S steps gives back: tokens [b, M, S], q [b, M, S, V]
    (None: greedy point masses), the draft's logits at each step (S tensors [b, M, V]), the
    candidates that late branches took (roots where none did, [b, M]), the flat KV slot each
    branch wrote at each step [b, M, S] and the step each branch started at [b, M] (1: late, its
    tokens at steps 1..S-1)."""

    tokens: Tensor
    q: Tensor | None
    logits: list[Tensor]
    roots: Tensor
    slots: Tensor
    start: Tensor


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
        self._forward, self._fill, self._draft, self._tree, self._move = s

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
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Up to K drafted tokens [b, k], their q rows [b, k, V] (None: greedy point masses) and
        the draft's logits each was drawn from [b, k, V].

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
            self.kv, tokens, q, _, logits = self._draft(
                m.params, m.cfg, self.kv, tokens0, metas, st, keys, saguaro_f, c
            )
            return tokens, q, logits
        toks, qs, rows, inp = [], [], [], tokens0
        for d in range(self.k):
            f = None if saguaro_f is None else saguaro_f[:, d : d + 1]
            self.kv, tok, q, conf, logits = self._draft(
                m.params, m.cfg, self.kv, inp, metas[d : d + 1], st, keys, f, c
            )
            toks.append(tok)
            qs.append(q)
            rows.append(logits)
            inp = tok
            if bool((conf[:real, 0] < stop_below).all()):
                break
        q_all = None if qs[0] is None else torch.cat(qs, 1)
        return torch.cat(toks, 1), q_all, torch.cat(rows, 1)

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

    def move(self, batch: Sequence[Request], src: Tensor) -> None:
        """Copy the KV at flat slots src [b, n] (-1: none) to each request's glue slots, from its
        last committed token r on: a cached branch just sent becomes the sequence's own."""
        ps = self.kv.page_size

        def slot(table: list[int], s: int) -> int:
            return table[s // ps] * ps + s % ps

        dst = [
            [slot(self.pages[r.id], r.length - 1 + j) for j in range(src.shape[1])] for r in batch
        ]
        dst += [[-1] * src.shape[1]] * (src.shape[0] - len(batch))  # batch padding: nothing
        to = torch.tensor(dst, dtype=torch.int64, device=self.device)
        to = torch.where(src >= 0, to, -1)
        m = self.model
        self.kv = self._move(m.params, m.cfg, self.kv, src.flatten(), to.flatten())

    def tree(
        self,
        batch: Sequence[Request],
        cands: saguaro.Candidates,
        saguaro_f: Tensor | None,
        c: Tensor | None,
        between: Callable[[], None] | None = None,
        late: Tensor | None = None,
    ) -> Tree:
        """K tree-decode steps over all candidate branches (`Tree`). With `between`, one call
        per step, `between()` after each: the same tokens (a step's coins are keyed by its
        positions, not by its index).

        `late` [b, M] marks the branches that fork after the last glue token when its KV and
        logits are still to come (`ssd.kv.tree_meta` starts): their roots are that token, step 0
        writes its KV and they take its likeliest tokens as candidates, in their order. `saguaro_f`
        [b, K] is per depth of the next speculation; a late branch draws its first token in
        step 1."""
        b, st, keys = batch_inputs(batch, self.device)
        tables, mp = self._tables(batch, b)
        tables = tables[: len(batch)] + [self.pad_table] * (b - len(batch))
        mp = max(mp, pow2(len(self.pad_table)))
        depths = cands.depth.tolist()
        prefix = [r.length - 1 for r in batch] + [0] * (b - len(batch))
        scratch = [p + self.k + 1 for p in prefix]
        m = len(depths[0])
        start = torch.zeros_like(cands.depth) if late is None else late.long()
        metas = [
            tree_meta(
                tables,
                prefix,
                depths,
                t,
                scratch,
                self.kv.page_size,
                starts=None if late is None else start.tolist(),
                q_len=m,
                max_pages=mp,
                device=self.device,
            )
            for t in range(self.k)
        ]
        slots = torch.stack([x.slot_mapping[:, :m] for x in metas], 2)
        rank = None
        if late is not None:
            rank = torch.where(late, late.long().cumsum(1) - 1, -1)
        f = None
        if saguaro_f is not None:  # each branch's step t drafts its depth t - start
            steps = torch.arange(self.k, device=self.device)
            depth = (steps - start[..., None]).clamp(min=0)
            f = saguaro_f[:, None, :].expand(-1, m, -1).gather(2, depth)
        mo = self.model
        if between is None:
            self.kv, tokens, q, logits, _ = self._tree(
                mo.params, mo.cfg, self.kv, cands.token, metas, st, keys, f, c, rank
            )
            rows = list(logits.unbind(2))
            roots = cands.token if rank is None else late_candidates(rows[0], cands.token, rank)
            return Tree(tokens, q, rows, roots, slots, start)
        toks, qs, rows, inp = [], [], [], cands.token
        roots = cands.token
        for d in range(self.k):
            fd = None if f is None else f[:, :, d : d + 1]
            self.kv, tok, q, logits, inp = self._tree(
                mo.params, mo.cfg, self.kv, inp, metas[d : d + 1], st, keys, fd, c, rank
            )
            if d == 0 and late is not None:
                roots = torch.where(late, inp, cands.token)
            rank = None
            toks.append(tok)
            qs.append(q)
            rows.append(logits[:, :, 0])
            between()
        q_all = None if qs[0] is None else torch.cat(qs, 2)
        return Tree(torch.cat(toks, 2), q_all, rows, roots, slots, start)
