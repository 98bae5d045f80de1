"""The target model's side of the request loops: its KV pages, prefill and decode.

Both loops (`ARRunner`, `SpecRunner`) drive one `TargetModel`, as the drafters drive a
`DraftModel` (`ssd.engine.draft_model`); the speculative loop adds verification on the same cache.
Which requests run is the `Scheduler`'s choice (`ssd.engine.scheduler`).
"""

from __future__ import annotations

import torch

from ssd import random as rnd
from ssd.engine.prefix_cache import PrefixCache
from ssd.engine.requests import Request
from ssd.engine.speculation import PAD_PARAMS
from ssd.jit import Step, length_buckets, pow2
from ssd.kv import KVCache, pack_tokens, step_meta
from ssd.models.loading import Model
from ssd.sampling import SamplingTensors
from ssd.steps import decode_step, verify_step


class TargetModel:
    """The target with its paged KV cache and its prefill/decode step.

    Host side: which pages each request owns. Device side: one pure step per call, padded to
    power-of-two buckets of (batch, query length, pages per sequence); prompts are prefilled
    one query-length bucket at a time. `lookahead` is the KV room a request needs past its
    tokens (K+1 for speculation).
    """

    def __init__(
        self,
        model: Model,
        kv: KVCache,
        step: Step,
        max_batch: int,
        max_len: int,
        lookahead: int,
        prefix_caching: bool = False,
        token_budget: int | None = None,
    ):
        self.model, self.kv, self.step = model, kv, step
        self.token_budget = token_budget  # prompt tokens one prefill step may take
        self.max_batch, self.max_len, self.lookahead = max_batch, max_len, lookahead
        self.pages = PrefixCache(kv.num_pages, kv.page_size, enabled=prefix_caching)
        self.device = kv.k_pages.device

    def reserve(self, req: Request) -> bool:
        """Take the pages a request needs to be prefilled and take its next step (sharing the
        cached pages of its prompt's prefix); False if too few are free. Later pages come as
        it grows (`grow`)."""
        cached = self.pages.acquire(req.pages, req.prompt, self.slots_now(req))
        if cached is None:
            return False
        req.cached = cached
        return True

    def grow(self, req: Request) -> bool:
        """Pages for the request's next step; False if too few are free."""
        return self.pages.extend(req.pages, self.slots_now(req))

    def slots_now(self, req: Request) -> int:
        """KV slots the request's next step writes up to: its tokens and the lookahead."""
        return req.length + self.lookahead

    def release(self, req: Request) -> None:
        self.pages.release(req.pages)

    def slots_needed(self, req: Request) -> int:
        """KV slots a request holds at the end of its run (at most)."""
        return min(req.length + req.params.max_tokens, self.max_len) + self.lookahead

    def check_fits(self, req: Request) -> None:
        """Refuse (ValueError) a request that could not fit even in an empty cache."""
        need = self.slots_needed(req)
        if -(-need // self.kv.page_size) > self.kv.num_pages:
            raise ValueError(
                f"the request needs {need} KV slots (prompt, max_tokens and lookahead), more "
                f"than the whole cache ({self.kv.num_pages} pages of {self.kv.page_size}); "
                "raise num_pages or lower max_tokens"
            )

    def prefill(self, batch: list[Request]) -> list[int]:
        """Each request's context (`Request.context`), past its cached prefix, into the cache;
        returns the token that follows (for a new request, its first one)."""
        out = [0] * len(batch)
        for q, rows in length_buckets([len(r.context) - r.cached for r in batch]):
            group = [batch[i] for i in rows]
            seqs = [r.context[r.cached :] for r in group]
            tokens = self._step(group, seqs, [r.cached for r in group], q)
            for i, t in zip(rows, tokens, strict=True):
                out[i] = t
        for req in batch:
            self.pages.register(req.pages, req.prompt)
        return out

    def decode(self, batch: list[Request]) -> list[int]:
        """Each request's last token into the cache; returns the next token of each."""
        seqs = [[r.out[-1]] for r in batch]
        return self._step(batch, seqs, [r.length - 1 for r in batch], q=1)

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
        params = [r.params for r in batch] + [PAD_PARAMS] * pad
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


def target_steps(jit: str) -> list[Step]:
    """Every step the target runs: decode (prefill too), then verification."""
    return [make_step(jit), Step(verify_step, jit, persistent=(0, 2), donate=2)]
