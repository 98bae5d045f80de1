"""Which requests run: continuous batching over the target's KV pages.

Requests wait in arrival order and join the running batch between steps while the batch has a
free row and the target's cache has the pages to prefill them; running requests take pages as
they grow. When a step would need more pages than are free, the requests admitted last are
preempted: their pages go back and they wait at the head of the queue, to be recomputed when
pages free up (their committed tokens are prefilled again; sampling keys depend only on the
request and the position, so they go on with exactly the tokens they would have had).
Finished requests leave and return their pages at once, so waiting ones take their place on
the next step.
"""

from __future__ import annotations

from collections import deque

from ssd.engine.requests import Request
from ssd.engine.target import TargetModel


class Scheduler:
    def __init__(self, target: TargetModel):
        self.target = target
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.preemptions = 0  # since the engine started

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, req: Request) -> None:
        """Queue a request (refused with ValueError if it could never fit in the cache)."""
        self.target.check_fits(req)
        self.waiting.append(req)

    def admit(self) -> list[Request]:
        """Move waiting requests into the batch, in order, while there is a row, their pages
        and room in the prefill's token budget (the first is admitted whatever its length);
        returns them."""
        new: list[Request] = []
        budget, tokens = self.target.token_budget, 0
        while self.waiting and len(self.running) < self.target.max_batch:
            n = len(self.waiting[0].context)
            if new and budget is not None and tokens + n > budget:
                break
            if not self.target.reserve(self.waiting[0]):
                break  # the head waits for pages: later requests do not overtake it
            new.append(req := self.waiting.popleft())
            self.running.append(req)
            tokens += n
        return new

    def start(self, admitted: list[Request], tokens: list[int]) -> list[tuple[Request, int]]:
        """Record the token each admitted request's prefill produced: a new request's first (a
        request resumed after preemption has its tokens, and its next comes from its next
        step, as if never preempted); finishes those done. Returns (request, new tokens)."""
        events = []
        for req, tok in zip(admitted, tokens, strict=True):
            if req.resumed:
                events.append((req, 0))
                continue
            if req.append(tok, self.target.max_len):
                self.finish(req)
            events.append((req, 1))
        return events

    def make_room(self) -> list[Request]:
        """Pages for every running request's next step, preempting the ones admitted last
        while some request lacks them; returns the preempted requests (no longer running)."""
        preempted: list[Request] = []
        i = 0
        while i < len(self.running):
            if self.target.grow(self.running[i]):
                i += 1
                continue
            victim = self.running.pop()  # the last admitted; it may be the one growing
            self.target.release(victim)
            victim.preemptions += 1
            self.preemptions += 1
            preempted.append(victim)
        # back at the head of the queue, in their admission order
        self.waiting.extendleft(preempted)
        return preempted

    def finish(self, req: Request) -> None:
        """The request is done: its pages are freed and it leaves the batch."""
        self.target.release(req)
        self.running.remove(req)
