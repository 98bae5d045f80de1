"""Speculative decoding's request loop: one verification round per iteration, whatever drafts.

The runner owns the target (its KV pages, prefill, verification) and asks a `Drafter` for each
round's speculation; SD, SSD and research policies differ only in the drafter they plug in.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from ssd import random as rnd
from ssd.config import SamplingParams
from ssd.engine.ar import ARRunner
from ssd.engine.metrics import AcceptanceStats, SpecMetrics
from ssd.engine.requests import Request
from ssd.jit import Step, pow2
from ssd.kv import KVCache, step_meta
from ssd.models.loading import Model
from ssd.sampling import SamplingTensors

PAD_PARAMS = SamplingParams(temperature=0)


@dataclasses.dataclass
class Speculation:
    """One round's proposal for a batch: tokens [B, K] and the rows q [B, K, V] they were drawn
    from (None when every row is a point mass); `point_mass` [B] marks deterministic rows;
    `hit` says per row whether it came from the speculation cache (None outside SSD)."""

    tokens: Tensor
    q: Tensor | None
    point_mass: Tensor
    hit: list[bool | None]


class Drafter(Protocol):
    k: int

    def admit(self, reqs: Sequence[Request]) -> None:
        """Start drafting for new requests (their prompt is prefilled, r is in `req.out`)."""

    def speculate(self, batch: Sequence[Request]) -> Speculation:
        """The next speculation for each request of the batch."""
        ...

    def observe(
        self,
        batch: Sequence[Request],
        accepted: Sequence[int],
        token: Sequence[int],
        seconds: float,
    ) -> None:
        """The verification outcome of the round just speculated, and how long verifying took."""

    def release(self, req: Request) -> None:
        """The request finished."""


def batch_inputs(
    batch: Sequence[Request], device: torch.device
) -> tuple[int, SamplingTensors, Tensor]:
    """Padded batch size, per-row sampling tensors and per-request keys for a batch."""
    b = pow2(len(batch))
    params = [r.params for r in batch] + [PAD_PARAMS] * (b - len(batch))
    seeds = torch.tensor([r.seed for r in batch] + [0] * (b - len(batch)), dtype=torch.int64)
    return b, SamplingTensors.from_params(params, device=device), rnd.key(seeds).to(device)


class SpecRunner(ARRunner):
    """Prefill with the AR step, then verification rounds over [r, s_1..s_K]."""

    def __init__(
        self,
        model: Model,
        kv: KVCache,
        prefill: Step,
        verify: Step,
        drafter: Drafter,
        max_batch: int,
        max_len: int,
    ):
        super().__init__(model, kv, prefill, max_batch, max_len)
        self.verify, self.drafter, self.k = verify, drafter, drafter.k
        self.lookahead = drafter.k + 1
        self.metrics = SpecMetrics(self.k)

    def finish(self, req: Request, running: list[Request]) -> None:
        super().finish(req, running)
        self.drafter.release(req)

    def run(self, requests: Sequence[Request]) -> Iterator[tuple[Request, int]]:
        """Run to completion, yielding (request, number of new tokens) after each round."""
        self.metrics = SpecMetrics(self.k)
        waiting, running = deque(requests), list[Request]()
        while waiting or running:
            admitted = self._admit(waiting, running)
            if admitted:
                for req in admitted:
                    req.acceptance = AcceptanceStats(self.k)
                tokens = self._forward(admitted, prefill=True)
                done = [
                    r for r, t in zip(admitted, tokens, strict=True) if r.append(t, self.max_len)
                ]
                live = [r for r in admitted if r not in done]
                if live:  # the drafter starts from the prompt and its first token r
                    self.drafter.admit(live)
                for req in admitted:
                    yield req, 1
                for req in done:
                    ARRunner.finish(self, req, running)  # never reached the drafter
                continue
            start = time.perf_counter()
            batch = list(running)
            spec = self.drafter.speculate(batch)
            verify_start = time.perf_counter()
            wait = verify_start - start
            self.metrics.target_wait_seconds += wait
            # a draft in its own process reports its busy time; a local one is busy while we wait
            self.metrics.draft_busy_seconds += getattr(self.drafter, "busy_seconds", wait)
            accepted, token, drafted = self._verify(batch, spec)
            verify_seconds = time.perf_counter() - verify_start
            self.drafter.observe(batch, accepted, token, verify_seconds)
            for i, req in enumerate(batch):
                emitted = [*drafted[i][: accepted[i]], token[i]]
                kept = 0
                for tok in emitted:
                    kept += 1
                    if req.append(tok, self.max_len):
                        break
                # drafts after a stop were accepted but are not emitted: they do not count
                counted = min(accepted[i], kept)
                self.metrics.record(counted, kept, spec.hit[i])
                assert req.acceptance is not None
                req.acceptance.add_round(counted, kept)
                if spec.hit[i] is not None and accepted[i] == self.k:
                    self.metrics.bonus_rounds += 1
                    self.metrics.bonus_predicted += bool(spec.hit[i])
                yield req, kept
                if req.finish_reason is not None:
                    self.finish(req, running)
            self.metrics.decode_seconds += time.perf_counter() - start

    def _verify(
        self, batch: list[Request], spec: Speculation
    ) -> tuple[list[int], list[int], list[list[int]]]:
        b, st, keys = batch_inputs(batch, self.device)
        pad = b - len(batch)
        k, dev = self.k, self.device
        tables = [r.pages for r in batch] + [[]] * pad
        meta = step_meta(
            tables,
            [r.length - 1 for r in batch] + [0] * pad,
            [k + 1] * len(batch) + [0] * pad,
            self.kv.page_size,
            q_len=k + 1,
            max_pages=pow2(max(len(t) for t in tables)),
            device=dev,
        )
        drafted = _pad_rows(spec.tokens, b)
        r = torch.tensor([x.out[-1] for x in batch] + [0] * pad, device=dev)
        tokens = torch.cat([r[:, None], drafted], 1)
        q = None if spec.q is None else _pad_rows(spec.q, b)
        point = _pad_rows(spec.point_mass, b, fill=True)
        m = self.model
        self.kv, out = self.verify(m.params, m.cfg, self.kv, tokens, meta, q, point, st, keys)
        rows = torch.cat([out.num_accepted[:, None], out.next_token[:, None], drafted], 1)
        host = rows[: len(batch)].tolist()  # the round's one host synchronization
        return [h[0] for h in host], [h[1] for h in host], [h[2:] for h in host]


def _pad_rows(x: Tensor, b: int, fill: bool | int = 0) -> Tensor:
    if x.shape[0] == b:
        return x
    pad = torch.full((b - x.shape[0], *x.shape[1:]), fill, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad])
