"""What the target's request loop and the drafters share: the speculation of a round, the
drafter interfaces, and the batch padding both sides apply.

Batches run at power-of-two sizes (`ssd.jit.pow2`); padding rows are greedy (`PAD_PARAMS`),
draft zeros and are verified as point masses, and their outputs are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from ssd import random as rnd
from ssd.config import SamplingParams
from ssd.engine.requests import Request
from ssd.jit import pow2
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


class DraftFailure(RuntimeError):
    """The drafter cannot go on (its process died, or did not answer in time)."""


class Drafter(Protocol):
    """What the target's loop (`SpecRunner`) asks of a drafter, in this process or another."""

    k: int
    busy_seconds: float  # how long the draft worked on the last `speculate`'s answer and work

    def admit(self, reqs: Sequence[Request]) -> None:
        """Start drafting for new requests (their prompt is prefilled, r is in `req.out`)."""

    def speculate(self, batch: Sequence[Request]) -> Speculation:
        """The next speculation for each request of the batch; raises `DraftFailure` when the
        drafter cannot answer (the request loop then continues with its fallback)."""
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

    def close(self) -> None:
        """Free what the drafter holds outside this process (its worker); idempotent."""


class LocalDrafter(Drafter, Protocol):
    """A drafter that owns its draft model: `speculate` is `answer` then `prepare`, and a draft
    worker process calls the two apart, replying to the target in between."""

    def answer(
        self, batch: Sequence[Request], drafting: Callable[[], None] | None = None
    ) -> Speculation:
        """This round's speculation (SSD: from the cache, or the backup on a miss); `drafting`
        is called before the draft's passes, if any (a worker then takes every core)."""
        ...

    def prepare(
        self, batch: Sequence[Request], spec: Speculation, between: Callable[[], None] | None = None
    ) -> None:
        """Work for the next round that can overlap this round's verification; `between` is
        called between its draft passes (a worker checks whether the target is waiting)."""


def batch_inputs(
    batch: Sequence[Request], device: torch.device
) -> tuple[int, SamplingTensors, Tensor]:
    """Padded batch size, per-row sampling tensors and per-request keys for a batch."""
    b = pow2(len(batch))
    params = [r.params for r in batch] + [PAD_PARAMS] * (b - len(batch))
    seeds = torch.tensor([r.seed for r in batch] + [0] * (b - len(batch)), dtype=torch.int64)
    return b, SamplingTensors.from_params(params, device=device), rnd.key(seeds).to(device)


def pad_rows(x: Tensor, b: int, fill: bool | int = 0) -> Tensor:
    """x [n, ...] with rows of `fill` appended up to b rows."""
    if x.shape[0] == b:
        return x
    pad = torch.full((b - x.shape[0], *x.shape[1:]), fill, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad])
