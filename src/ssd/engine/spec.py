"""Speculative decoding's request loop: one verification round per iteration, whatever drafts.

The runner drives the target (`TargetModel`: its KV pages and prefill, plus verification here)
and asks a `Drafter` for each round's speculation; SD, SSD and research policies differ only
in the drafter they plug in. When the drafter fails (`DraftFailure`: a draft process that died
or hangs), the runner swaps in its `fallback` (an in-process drafter), hands it every running
request as it stands, and goes on: verification makes any proposal exact, so no token changes
law and none is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from ssd.engine.metrics import AcceptanceStats, SpecMetrics
from ssd.engine.requests import Request
from ssd.engine.scheduler import Scheduler
from ssd.engine.speculation import Drafter, DraftFailure, Speculation, batch_inputs, pad_rows
from ssd.engine.target import TargetModel
from ssd.jit import Step, pow2
from ssd.kv import step_meta

log = logging.getLogger(__name__)


class SpecRunner:
    """Prefill with the target's step, then verification rounds over [r, s_1..s_K]."""

    def __init__(
        self,
        target: TargetModel,
        verify: Step,
        drafter: Drafter,
        fallback: Callable[[], Drafter] | None = None,
    ):
        if target.lookahead < drafter.k + 1:
            raise ValueError(f"the target needs lookahead >= K+1 = {drafter.k + 1} KV slots")
        self.target, self.verify, self.drafter, self.k = target, verify, drafter, drafter.k
        self.fallback = fallback
        self.sched = Scheduler(target)
        self.metrics, self._idle = SpecMetrics(self.k), True

    def close(self) -> None:
        self.drafter.close()

    def step(self) -> list[tuple[Request, int]]:
        """A prefill of newly admitted requests, else one verification round for the running
        batch; returns (request, number of new tokens) for each request it advanced. The
        metrics cover one busy period: they restart on the first step after the engine idled."""
        if self._idle:
            self.metrics, self._idle = SpecMetrics(self.k), False
        sched = self.sched
        admitted = sched.admit()
        if admitted:
            events = self._prefill(admitted)
        else:
            for req in sched.make_room():
                self.drafter.release(req)  # its draft pages too; re-admitted with its tokens
            events = self._round(list(sched.running)) if sched.running else []
        self._idle = not sched.busy
        return events

    def _prefill(self, admitted: list[Request]) -> list[tuple[Request, int]]:
        for req in admitted:
            if not req.resumed:  # a request back from preemption keeps its rounds
                req.acceptance = AcceptanceStats(self.k)
        events = self.sched.start(admitted, self.target.prefill(admitted))
        live = [r for r in admitted if r.finish_reason is None]  # finished: never drafted
        if live:  # the drafter starts from the committed tokens, the last one r
            self.drafter.admit(live)
        return events

    def _round(self, batch: list[Request]) -> list[tuple[Request, int]]:
        start = time.perf_counter()
        spec = self._speculate(batch)
        verify_start = time.perf_counter()
        self.metrics.target_wait_seconds += verify_start - start
        self.metrics.draft_busy_seconds += self.drafter.busy_seconds
        accepted, token, drafted = self._verify(batch, spec)
        verify_seconds = time.perf_counter() - verify_start
        self.drafter.observe(batch, accepted, token, verify_seconds)
        events = []
        for i, req in enumerate(batch):
            emitted = [*drafted[i][: accepted[i]], token[i]]
            kept = 0
            for tok in emitted:
                kept += 1
                if req.append(tok, self.target.max_len):
                    break
            # drafts after a stop are not emitted: they count neither as accepted nor as drafted
            counted = min(accepted[i], kept)
            offered = len(drafted[i]) if kept > accepted[i] else counted
            self.metrics.record(counted, kept, spec.hit[i], offered)
            assert req.acceptance is not None
            req.acceptance.add_round(counted, kept, offered)
            if spec.hit[i] is not None and accepted[i] == len(drafted[i]):
                self.metrics.bonus_rounds += 1
                self.metrics.bonus_predicted += bool(spec.hit[i])
            events.append((req, kept))
            if req.finish_reason is not None:
                self.sched.finish(req)
                self.drafter.release(req)
        self.metrics.decode_seconds += time.perf_counter() - start
        return events

    def _speculate(self, batch: list[Request]) -> Speculation:
        try:
            return self.drafter.speculate(batch)
        except DraftFailure as e:
            if self.fallback is None:
                raise
            log.warning("%s; the %d running requests go on with an in-process draft", e, len(batch))
            self.drafter.close()
            self.drafter, self.fallback = self.fallback(), None
            self.metrics.draft_failures += 1
            self.drafter.admit(batch)  # every running request, at its committed tokens
            return self.drafter.speculate(batch)

    def _verify(
        self, batch: list[Request], spec: Speculation
    ) -> tuple[list[int], list[int], list[list[int]]]:
        t = self.target
        b, st, keys = batch_inputs(batch, t.device)
        pad = b - len(batch)
        k, dev = spec.tokens.shape[1], t.device  # K, or fewer after an early stop
        tables = [r.pages for r in batch] + [[]] * pad
        meta = step_meta(
            tables,
            [r.length - 1 for r in batch] + [0] * pad,
            [k + 1] * len(batch) + [0] * pad,
            t.kv.page_size,
            q_len=k + 1,
            max_pages=pow2(max(len(t) for t in tables)),
            device=dev,
        )
        drafted = pad_rows(spec.tokens, b)
        r = torch.tensor([x.out[-1] for x in batch] + [0] * pad, device=dev)
        tokens = torch.cat([r[:, None], drafted], 1)
        q = None if spec.q is None else pad_rows(spec.q, b)
        point = pad_rows(spec.point_mass, b, fill=True)
        m = t.model
        t.kv, out = self.verify(m.params, m.cfg, t.kv, tokens, meta, q, point, st, keys)
        rows = torch.cat([out.num_accepted[:, None], out.next_token[:, None], drafted], 1)
        host = rows[: len(batch)].tolist()  # the round's one host synchronization
        return [h[0] for h in host], [h[1] for h in host], [h[2:] for h in host]
