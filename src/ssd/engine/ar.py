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
        if admitted:
            return sched.start(admitted, t.prefill(admitted))
        sched.make_room()
        batch = list(sched.running)  # a copy: finished requests leave `running`
        if not batch:
            return []
        for req, tok in zip(batch, t.decode(batch), strict=True):
            if req.append(tok, t.max_len):
                sched.finish(req)
        return [(req, 1) for req in batch]

    def close(self) -> None:
        pass
