"""Autoregressive decoding: the request loop that drives `decode_step` over shape buckets."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import torch

from ssd import random as rnd
from ssd.config import SamplingParams
from ssd.engine.requests import Request
from ssd.jit import Step, length_buckets, pow2
from ssd.kv import KVCache, PageAllocator, pack_tokens, step_meta
from ssd.models.loading import Model
from ssd.sampling import SamplingTensors
from ssd.steps import decode_step

_PAD_PARAMS = SamplingParams(temperature=0)


class ARRunner:
    """Runs requests to completion with batched prefill and decode steps.

    Host side: which requests run, which pages they own. Device side: one pure step per call,
    padded to power-of-two buckets of (batch, query length, pages per sequence); prompts are
    prefilled one query-length bucket at a time.
    """

    lookahead = 0  # extra KV slots a request needs beyond its tokens (speculation)

    def __init__(self, model: Model, kv: KVCache, step: Step, max_batch: int, max_len: int):
        self.model, self.kv, self.step = model, kv, step
        self.max_batch, self.max_len = max_batch, max_len
        self.pages = PageAllocator(kv.num_pages, kv.page_size)
        self.device = kv.k_pages.device

    def run(self, requests: Sequence[Request]) -> Iterator[tuple[Request, int]]:
        """Run to completion, yielding (request, number of new tokens) as tokens are made."""
        waiting, running = deque(requests), list[Request]()
        while waiting or running:
            admitted = self._admit(waiting, running)
            batch = list(admitted or running)  # a copy: finished requests leave `running`
            tokens = self._forward(batch, prefill=bool(admitted))
            for req, tok in zip(batch, tokens, strict=True):
                done = req.append(tok, self.max_len)
                yield req, 1
                if done:
                    self.finish(req, running)

    def _admit(self, waiting: deque[Request], running: list[Request]) -> list[Request]:
        """Start waiting requests while there is room; each reserves pages for its whole run."""
        new = []
        while waiting and len(running) < self.max_batch:
            req = waiting[0]
            need = min(req.length + req.params.max_tokens, self.max_len) + self.lookahead
            if -(-need // self.kv.page_size) > self.pages.num_free:
                if not running:
                    raise RuntimeError(
                        f"request {req.id} needs {need} KV slots, more than the whole cache "
                        f"({self.kv.num_pages} pages of {self.kv.page_size}); raise num_pages"
                    )
                break
            self.pages.ensure(req.pages, need)
            new.append(waiting.popleft())
            running.append(req)
        return new

    def finish(self, req: Request, running: list[Request]) -> None:
        self.pages.release(req.pages)
        running.remove(req)

    def _forward(self, batch: list[Request], prefill: bool) -> list[int]:
        if not prefill:
            seqs = [[r.out[-1]] for r in batch]
            return self._step(batch, seqs, [r.length - 1 for r in batch], q=1)
        out = [0] * len(batch)
        for q, rows in length_buckets([len(r.prompt) for r in batch]):
            group = [batch[i] for i in rows]
            tokens = self._step(group, [r.prompt for r in group], [0] * len(group), q)
            for i, t in zip(rows, tokens, strict=True):
                out[i] = t
        return out

    def _step(
        self, batch: list[Request], seqs: list[list[int]], starts: list[int], q: int
    ) -> list[int]:
        """Feed `seqs` (at positions `starts`) to the batch, padded to (pow2 batch, q); returns
        each request's next token, sampled from its last fed position."""
        pad = pow2(len(batch)) - len(batch)
        lens = [len(s) for s in seqs]
        tables = [r.pages for r in batch] + [[]] * pad
        meta = step_meta(
            tables,
            starts + [0] * pad,
            lens + [0] * pad,
            self.kv.page_size,
            q_len=q,
            max_pages=pow2(max(len(t) for t in tables)),
            device=self.device,
        )
        tokens = pack_tokens(seqs + [[]] * pad, q_len=q).to(self.device)
        params = [r.params for r in batch] + [_PAD_PARAMS] * pad
        st = SamplingTensors.from_params(params, device=self.device)
        seeds = torch.tensor([r.seed for r in batch] + [0] * pad, dtype=torch.int64)
        last = torch.tensor([n - 1 for n in lens] + [0] * pad, device=self.device)
        m = self.model
        self.kv, nxt = self.step(
            m.params, m.cfg, self.kv, tokens, meta, last, st, rnd.key(seeds).to(self.device)
        )
        return nxt.tolist()[: len(batch)]


def make_step(jit: str) -> Step:
    """`decode_step` under a jit; weights (arg 0) and KV pages (arg 2) persist, the cache is
    donated."""
    return Step(decode_step, jit, persistent=(0, 2), donate=2)
