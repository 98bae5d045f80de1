"""The collectives of a tensor-parallel forward: all-reduce and all-gather over a shard's group.

Across machines (and under `torchrun`) they are torch's functional collectives on the named
group. Ranks on one host can instead meet in a shared-memory block (`SharedBlock`): each rank
writes its part to its own slot, publishes a sequence number, waits until every rank has
published the same one, then reads all slots in rank order, so every rank computes the same
sum, bit for bit. A gloo all-reduce of one hidden row costs 1.4-2.9 ms on a CPU host (two
gloo threads and the loopback network each way, docs/performance.md); this costs a copy and a
few microseconds of waiting. Both are custom ops (`ssd::shm_all_reduce`, `ssd::shm_all_gather`)
so the forward stays one traceable function. Tensors larger than a slot use the functional
collectives (every rank sees the same shapes, so every rank makes the same choice).
"""

from __future__ import annotations

import os
import time
from typing import Any, cast

import torch
import torch.distributed._functional_collectives as funcol
from torch import Tensor

from ssd.models.config import Shard

# fp32 elements per rank and phase: a decode or verification step's hidden rows and a batch
# of 8 verification rounds' logits of a 152k vocabulary on two ranks fit.
SLOT_ELEMS = 4 << 20
_LINE = 8  # int64 per rank: its sequence counter and pid, alone on a 64-byte cache line
_CHECK_S = 1.0  # how often a waiting rank checks that the ranks it waits for are alive

_BLOCKS: dict[str, SharedBlock] = {}  # group name -> this process's view of the block


class SharedBlock:
    """Slots and sequence counters in one shared tensor (`allocate` it on rank 0 and hand it to
    the other ranks' processes), viewed by one rank. A rank that waits for another checks,
    about once a second, that the other's process is still alive, and raises RuntimeError
    instead of waiting forever for a rank that died."""

    def __init__(self, block: Tensor, rank: int, size: int):
        self.rank, self.size = rank, size
        lines = block[: size * _LINE].view(size, _LINE)
        self.flags, self.pids = lines[:, 0], lines[:, 1]
        self.pids[rank] = os.getpid()
        self.slots = block[size * _LINE :].view(torch.float32).view(2, size, -1)
        self.seq = 0

    @staticmethod
    def allocate(size: int, slot_elems: int = SLOT_ELEMS) -> Tensor:
        """A zeroed block in shared memory for `size` ranks (int64 counters, then fp32 slots)."""
        return torch.zeros(size * _LINE + size * slot_elems, dtype=torch.int64).share_memory_()

    def fits(self, x: Tensor) -> bool:
        return x.numel() <= self.slots.shape[-1]

    def _exchange(self, x: Tensor) -> Tensor:
        """Publish this rank's `x`; returns every rank's, [size, x.numel()] fp32, once all have
        published. Two phases alternate, so a rank a step ahead never overwrites a slot that
        another still reads (it cannot get two steps ahead: each step waits for all)."""
        self.seq += 1
        slots = self.slots[self.seq % 2]
        n = x.numel()
        slots[self.rank, :n].copy_(x.reshape(-1))
        # x86 keeps stores in order: the slot's data is visible before the counter that
        # publishes it, and the threads that copied joined before this store.
        self.flags[self.rank] = self.seq
        check = time.monotonic() + _CHECK_S
        while int(self.flags.min()) < self.seq:
            os.sched_yield()
            if time.monotonic() > check:
                self._check_alive()
                check = time.monotonic() + _CHECK_S
        return slots[:, :n]

    def _check_alive(self) -> None:
        for rank in range(self.size):
            pid = int(self.pids[rank])
            if int(self.flags[rank]) < self.seq and pid and not _alive(pid):
                raise RuntimeError(f"tensor-parallel rank {rank} (pid {pid}) is gone")

    def all_reduce(self, x: Tensor) -> Tensor:
        parts = self._exchange(x)
        out = parts[0].clone()
        for r in range(1, self.size):  # rank order: the same sum on every rank
            out += parts[r]
        return out.view(x.shape).to(x.dtype)

    def all_gather(self, x: Tensor) -> Tensor:
        """Every rank's `x` stacked on a new leading dimension."""
        return self._exchange(x).reshape(self.size, *x.shape).to(x.dtype).clone()


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (an exited child not yet reaped is a zombie: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not os.path.isdir("/proc")  # where /proc exists, no entry means gone


def register(group: str, block: Tensor, rank: int, size: int) -> None:
    """Let this process's shards of group `group` meet in `block`."""
    _BLOCKS[group] = SharedBlock(block, rank, size)


def has_block(group: str) -> bool:
    return group in _BLOCKS


def unregister(group: str) -> None:
    _BLOCKS.pop(group, None)


@torch.library.custom_op("ssd::shm_all_reduce", mutates_args=())
def shm_all_reduce(x: Tensor, group: str) -> Tensor:
    return _BLOCKS[group].all_reduce(x)


@shm_all_reduce.register_fake
def _(x: Tensor, group: str) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("ssd::shm_all_gather", mutates_args=())
def shm_all_gather(x: Tensor, group: str, size: int) -> Tensor:
    return _BLOCKS[group].all_gather(x)


@shm_all_gather.register_fake
def _(x: Tensor, group: str, size: int) -> Tensor:
    return x.new_empty((size, *x.shape))


def _uses_block(x: Tensor, shard: Shard) -> bool:
    block = _BLOCKS.get(shard.group) if shard.shared_memory else None
    return block is not None and block.fits(x)


def all_reduce(x: Tensor, shard: Shard) -> Tensor:
    """The sum of every rank's `x`."""
    if _uses_block(x, shard):
        out: Tensor = torch.ops.ssd.shm_all_reduce(x, shard.group)
        return out
    return _waited(funcol.all_reduce(x, "sum", cast(Any, shard.group)))


def all_gather_last(x: Tensor, shard: Shard) -> Tensor:
    """Every rank's `x` [..., n] concatenated along the last dimension: [..., size * n]."""
    if _uses_block(x, shard):
        parts: Tensor = torch.ops.ssd.shm_all_gather(x.contiguous(), shard.group, shard.size)
    else:
        gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
        parts = _waited(gather(x.contiguous()[None], 0, cast(Any, shard.group)))
    return parts.movedim(0, -2).flatten(-2)


def _waited(x: Tensor) -> Tensor:
    # Eager calls return a tensor that waits on first use; wait here, where the value is due.
    return x.wait() if isinstance(x, funcol.AsyncCollectiveTensor) else x
