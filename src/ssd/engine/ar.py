"""Autoregressive decoding: the request loop that drives the target's decode step."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from ssd.engine.requests import Request
from ssd.engine.target import TargetModel


class ARRunner:
    """Runs requests to completion: batched prefill of admitted requests, else one decode step
    for every running request."""

    def __init__(self, target: TargetModel):
        self.target = target

    def run(self, requests: Sequence[Request]) -> Iterator[tuple[Request, int]]:
        """Run to completion, yielding (request, number of new tokens) as tokens are made."""
        t = self.target
        waiting, running = deque(requests), list[Request]()
        while waiting or running:
            admitted = t.admit(waiting, running)
            batch = list(admitted or running)  # a copy: finished requests leave `running`
            tokens = t.prefill(batch) if admitted else t.decode(batch)
            for req, tok in zip(batch, tokens, strict=True):
                done = req.append(tok, t.max_len)
                yield req, 1
                if done:
                    t.finish(req, running)
