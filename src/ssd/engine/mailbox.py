"""Messages one way between two processes of one host, through shared memory.

The draft worker and its target trade one message each way per round, and the target waits
for the answer. Through gloo each message crossed the loopback network and woke two sleeping
threads (gloo's and the caller's): 8-11 ms a round on a shared 2-core host, where an answer
from the speculation cache takes 2 (docs/performance.md, finding 48). Here the writer copies
the message into a shared buffer and bumps a sequence number; the reader, who expects it soon,
spins on that number (yielding its core each turn) and only then naps, so a message is read
microseconds after it is written.

A message is a picklable object plus tensors: [header length][pickled header][tensor bytes].
One larger than the buffer goes in parts, each taken by the reader before the next is written.
Counters and data share the buffer's x86 store order (as `ssd.models.collectives` does): the
data is visible before the number that publishes it.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

CAPACITY = 4 << 20  # bytes a part: one round's q rows at batch 1 and a 152k vocabulary fit
_ALIGN = 64  # each tensor's bytes start at a multiple of this
_CHECK_S = 0.1  # how often a waiting side checks that its peer is alive
_MAX_NAP_S = 2e-3  # the longest nap between checks once a wait outlasts its spin


class PeerGone(RuntimeError):
    """The other process exited, or did not write within the deadline."""


class Mailbox:
    """One direction's shared buffer: `allocate` it before spawning, then each side wraps it
    (the tensor travels to the spawned process as a shared-memory handle)."""

    def __init__(self, block: Tensor):
        # int64 [published, taken, message length], alone on a cache line; then the data
        self.line = block[:64].view(torch.int64).numpy()
        self.data = block[64:]
        self.seen = int(self.line[0])  # parts this side has read or written

    @staticmethod
    def allocate(capacity: int = CAPACITY) -> Tensor:
        return torch.zeros(64 + capacity, dtype=torch.uint8).share_memory_()

    @property
    def published(self) -> int:
        """How many parts the writer has published (the reader's next part is `seen` + 1)."""
        return int(self.line[0])

    def arrived(self) -> bool:
        """Whether the writer has published a part this side has not read."""
        return self.published > self.seen

    def send(self, obj: Any, tensors: Sequence[Tensor], wait: Waiter) -> None:
        """Write `obj` and `tensors` (read back in order by `recv`), once the reader has taken
        every earlier part (`wait`)."""
        wait.until(self._taken)
        meta = [(t.dtype, tuple(t.shape)) for t in tensors]
        header = pickle.dumps((obj, meta))
        pieces = [np.frombuffer(len(header).to_bytes(8, "little") + header, np.uint8)]
        total = pieces[0].size
        for t in tensors:
            pad = np.zeros(-total % _ALIGN, np.uint8)  # each tensor's bytes start aligned
            data = t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
            pieces += [pad, data]
            total += pad.size + data.size
        self.line[2] = total
        out, room = self.data.numpy(), self.data.numel()
        at = 0
        for piece in pieces:
            done = 0
            while done < piece.size:
                if at == room:  # a full part: publish it, and wait for the reader to take it
                    self._publish()
                    wait.until(self._taken)
                    at = 0
                n = min(piece.size - done, room - at)
                out[at : at + n] = piece[done : done + n]
                at, done = at + n, done + n
        self._publish()

    def recv(self, wait: Waiter) -> tuple[Any, list[Tensor]]:
        """The next message, waiting for each of its parts with `wait`."""
        wait.until(self.arrived)
        total = int(self.line[2])
        buf = np.empty(total, np.uint8)
        room, at = self.data.numel(), 0
        while True:
            n = min(room, total - at)
            buf[at : at + n] = self.data[:n].numpy()
            at += n
            self.seen += 1
            self.line[1] = self.seen  # taken: the writer may write the next part
            if at == total:
                break
            wait.until(self.arrived)
        size = int.from_bytes(buf[:8].tobytes(), "little")
        obj, meta = pickle.loads(buf[8 : 8 + size].tobytes())
        whole = torch.from_numpy(buf)
        tensors, at = [], 8 + size
        for dtype, shape in meta:
            at += -at % _ALIGN
            n = math.prod(shape) * dtype.itemsize
            tensors.append(whole[at : at + n].view(dtype).view(shape))
            at += n
        return obj, tensors

    def _taken(self) -> bool:
        return int(self.line[1]) >= self.seen

    def _publish(self) -> None:
        self.seen += 1
        self.line[0] = self.seen


class Waiter:
    """Spin (yielding the core each turn) for up to `spin_s`, then nap in growing steps up to
    2 ms; raise `PeerGone` when `alive()` turns false (checked every 0.1 s) or past
    `timeout_s`."""

    def __init__(
        self,
        spin_s: float = 0.0,
        timeout_s: float | None = None,
        alive: Callable[[], bool] = lambda: True,
        what: str = "the other process",
    ):
        self.spin_s, self.timeout_s, self.alive, self.what = spin_s, timeout_s, alive, what

    def until(self, ready: Callable[[], bool]) -> None:
        if ready():
            return
        start = time.monotonic()
        spin_end = start + self.spin_s
        while time.monotonic() < spin_end:
            if ready():
                return
            os.sched_yield()
        nap, check = 5e-5, time.monotonic() + _CHECK_S
        deadline = None if self.timeout_s is None else start + self.timeout_s
        while not ready():
            time.sleep(nap)
            nap = min(2 * nap, _MAX_NAP_S)
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise PeerGone(f"{self.what} did not answer in {self.timeout_s:g} s")
            if now > check:
                if not self.alive():
                    raise PeerGone(f"{self.what} exited")
                check = now + _CHECK_S
