"""Autoregressive decoding: the request loop that drives the target's decode step."""

from __future__ import annotations

from ssd.engine.requests import Request
from ssd.engine.scheduler import Scheduler
from ssd.engine.target import TargetModel


class ARRunner:
    """One step at a time: a batched prefill of newly admitted requests, else one decode step
    for every running request."""

    def __init__(self, target: TargetModel):
        self.target = target
        self.sched = Scheduler(target)

    def step(self) -> list[tuple[Request, int]]:
        """One step; returns (request, number of new tokens) for each request it advanced."""
        t, sched = self.target, self.sched
        admitted = sched.admit()
        batch = list(admitted or sched.running)  # a copy: finished requests leave `running`
        if not batch:
            return []
        tokens = t.prefill(batch) if admitted else t.decode(batch)
        for req, tok in zip(batch, tokens, strict=True):
            if req.append(tok, t.max_len):
                sched.finish(req)
        return [(req, 1) for req in batch]

    def close(self) -> None:
        pass
