"""Meeting the processes an engine spawns (a draft worker, a model's other ranks) on this host:
a store on a free port (no fixed port, so engines share a machine), a wait that notices a
process dying on its way to the store, and pickled objects as byte tensors for gloo."""

from __future__ import annotations

import datetime
import pickle
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def host_store(world: int, timeout_s: float) -> dist.TCPStore:
    """A store on a free port of this host for `world` processes, hosted by this one."""
    timeout = datetime.timedelta(seconds=timeout_s)
    return dist.TCPStore("127.0.0.1", 0, world, True, wait_for_workers=False, timeout=timeout)


def await_keys(store: Any, keys: Sequence[str], procs: Sequence[Any], timeout_s: float) -> str:
    """Wait until the spawned `procs` have set every key; returns "" or, at once if one of them
    exits first (a bad import, say) instead of after the whole timeout, what went wrong."""
    deadline = time.monotonic() + timeout_s
    while not store.check(list(keys)):
        dead = [p.exitcode for p in procs if not p.is_alive()]
        if dead:
            return f"exited with code {', '.join(map(str, dead))} at start"
        if time.monotonic() > deadline:
            return f"did not start in {timeout_s:g} s"
        time.sleep(0.02)
    return ""


def pickled(obj: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)


def unpickled(data: torch.Tensor) -> Any:
    return pickle.loads(data.numpy().tobytes())
