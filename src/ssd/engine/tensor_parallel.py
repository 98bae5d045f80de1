"""A tensor-parallel model: N processes, each holding its shard of the weights and KV cache.

The target's mesh and the draft's are two independent instances (sizes N and M). Rank 0 is
the process that drives the model (the engine's, or the draft worker's): it schedules, builds
each step's inputs and samples, as with one process. Before each step it broadcasts the step's
inputs (tokens, attention metadata, sampling tensors, keys, proposals: everything but the
weights and the cache) to the other ranks, which run the same pure step on their shards; the
collectives inside the forward (`ssd.models.decoder`) join the ranks' partial results. Every
rank computes the same logits and draws the same tokens from the same keys; rank 0 keeps them.

Two ways to form the group:
- `LLM(tensor_parallel=N)` in a plain process spawns ranks 1..N-1 on this machine, joined by a
  private gloo group registered under its own name (no global torch.distributed state, no
  fixed port: several engines can share a machine), each rank pinned to its share of the
  cores; their all-reduces and all-gathers meet in shared memory (`ssd.models.collectives`);
- under `torchrun` (WORLD_SIZE set), every launched process is a rank of the default group
  and of a one-axis `DeviceMesh` ("tp"): gloo on CPU, NCCL on GPUs, on one machine or several.
  Ranks other than 0 serve inside `LLM(...)` and exit the process when rank 0 closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import faulthandler
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.utils._pytree as pytree

from ssd.engine.rendezvous import await_keys, host_store, pickled, unpickled
from ssd.jit import Step
from ssd.kv import KVCache, alloc_kv_cache
from ssd.models import collectives
from ssd.models.loading import Model
from ssd.models.quantize import activation_dtype, load_at
from ssd.models.sharding import shard_model

# A follower waits for rank 0 without limit between steps (the engine may idle for hours).
_FOREVER = datetime.timedelta(days=3650)


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """What every rank needs to build its shard: the checkpoint, its precision ("int8": int8
    weights, bf16 activations and KV) and device, the KV cache's geometry, and the jit of its
    steps."""

    path: str
    dtype: str
    device: str
    num_pages: int
    page_size: int
    jit: str


class Group:
    """A tensor-parallel group as one rank sees it: its name for the functional collectives,
    and a broadcast of pickled objects from rank 0 for the step inputs."""

    def __init__(self, pg: Any, name: str, rank: int, size: int, store: Any = None):
        self.pg, self.name, self.rank, self.size = pg, name, rank, size
        self.store = store  # a private group's rendezvous, kept alive with it

    def broadcast(self, obj: Any = None, timeout: datetime.timedelta | None = None) -> Any:
        """Rank 0 sends `obj`; every rank returns it."""
        if self.rank == 0:
            data = pickled(obj)
            self._bcast(torch.tensor([data.numel()]), timeout)
            self._bcast(data, timeout)
            return obj
        n = int(self._bcast(torch.zeros(1, dtype=torch.int64), timeout))
        return unpickled(self._bcast(torch.empty(n, dtype=torch.uint8), timeout))

    def _bcast(self, t: torch.Tensor, timeout: datetime.timedelta | None) -> torch.Tensor:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        if timeout is not None:
            opts.timeout = timeout
        self.pg.broadcast([t], opts).wait()
        return t


def private_group(port: int, rank: int, size: int, timeout_s: float, store: Any = None) -> Group:
    """Join the gloo group of `size` ranks at the TCP store on `port` (rank 0 hosts it, or
    passes the `store` it already hosts), registered under a name of its own so that
    functional collectives find it."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(
            "127.0.0.1", port, size, rank == 0, timeout=timeout, wait_for_workers=False
        )
    if rank:
        store.set(f"up{rank}", "1")
    backend = dist.ProcessGroupGloo(store, rank, size, timeout)
    pg = dist.ProcessGroup(store, rank, size)
    pg._set_default_backend(dist.ProcessGroup.BackendType.GLOO)
    pg._register_backend(torch.device("cpu"), dist.ProcessGroup.BackendType.GLOO, backend)
    name: Any = f"ssd-tp-{port}"  # a plain str at run time (GroupName in the stubs)
    pg._set_group_name(name)
    torch._C._distributed_c10d._register_process_group(name, pg)
    return Group(pg, name, rank, size, store)


def torchrun_group(size: int, device: torch.device) -> Group:
    """This process's rank of the one-axis "tp" `DeviceMesh` over the `torchrun` world."""
    from torch.distributed.device_mesh import init_device_mesh

    world = int(os.environ["WORLD_SIZE"])
    if world != size:
        raise ValueError(f"tensor_parallel={size} but torchrun started {world} processes")
    if device.type == "cuda":  # "cuda" means this rank's GPU from here on
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    mesh = init_device_mesh(device.type, (size,), mesh_dim_names=("tp",))
    pg = mesh.get_group("tp")
    return Group(pg, pg.group_name, mesh.get_local_rank("tp"), size)


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class MirroredStep:
    """A step on rank 0 that first sends its inputs to the other ranks, which run
    their `steps[index]` on their own shards."""

    def __init__(self, step: Step, index: int, group: Group):
        self.step, self.index, self.group = step, index, group

    def __call__(self, params: Any, cfg: Any, kv: Any, *inputs: Any) -> Any:
        try:
            self.group.broadcast(("step", self.index, _to(inputs, "cpu")))
            return self.step(params, cfg, kv, *inputs)
        except RuntimeError as e:  # gloo: a peer's connection closed; shared memory: rank gone
            first = str(e).splitlines()[0][:160]
            raise RuntimeError(f"a tensor-parallel rank of this model failed ({first})") from e


def load_shard(spec: ShardSpec, group: Group) -> Model:
    """This rank's shard of the model (the full weights are read, split, then freed); its
    collectives go through shared memory where the group has a block."""
    full = load_at(spec.path, spec.dtype, spec.device)  # int8: row scales follow their rows
    shm = collectives.has_block(group.name)
    return shard_model(full, group.name, group.rank, group.size, shared_memory=shm)


def follow(spec: ShardSpec, group: Group, make_steps: Callable[[str], list[Step]]) -> None:
    """A rank other than 0: build the shard, then run each step rank 0 announces, until it says
    exit or its connection closes."""
    model = load_shard(spec, group)
    dtype = activation_dtype(spec.dtype)
    kv = alloc_kv_cache(model.cfg, spec.num_pages, spec.page_size, dtype, spec.device)
    steps = make_steps(spec.jit)
    group.broadcast(timeout=_FOREVER)  # rank 0's "ready" once every rank has its shard
    while True:
        try:
            msg = group.broadcast(timeout=_FOREVER)
        except RuntimeError:  # rank 0 is gone
            return
        if msg[0] == "exit":
            return
        _, index, inputs = msg
        out = steps[index](model.params, model.cfg, kv, *_to(inputs, spec.device))
        kv = out if isinstance(out, KVCache) else out[0]  # a step returns (kv, ...) or kv


def _to(inputs: Any, device: str) -> Any:
    """Step inputs travel through host memory (gloo); each rank puts them on its own device
    (under torchrun on GPUs, "cuda" is the rank's own: `torchrun_group` sets it)."""
    return pytree.tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, inputs)


class TensorParallelModel:
    """Rank 0's handle on the group: its own shard, the steps mirrored to the other ranks, and
    `close()` to stop them (spawned ranks are joined; torchrun ranks return from `LLM`).
    Under `torchrun` only the target's mesh spans the launched processes; a draft mesh is
    always spawned by the process that drives the draft."""

    def __init__(
        self,
        spec: ShardSpec,
        size: int,
        make_steps: Callable[[str], list[Step]],
        startup_timeout_s: float = 900.0,
        spawn: bool = False,
    ):
        self.procs: list[Any] = []
        self._affinity = os.sched_getaffinity(0)
        self._threads = torch.get_num_threads()
        self._made_world = under_torchrun() and not spawn and not dist.is_initialized()
        if under_torchrun() and not spawn:
            self.group = torchrun_group(size, torch.device(spec.device))
            if self.group.rank != 0:
                follow(spec, self.group, make_steps)
                dist.destroy_process_group()
                # Done serving: leave without the interpreter's teardown, where a native thread
                # still running could abort the process ("terminate called without an active
                # exception", about one exit in twelve).
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        else:
            self.group = self._spawn(spec, size, make_steps, startup_timeout_s)
        self.model = load_shard(spec, self.group)
        self.steps = [MirroredStep(s, i, self.group) for i, s in enumerate(make_steps(spec.jit))]
        self.group.broadcast("ready")
        self.closed = False

    def _spawn(
        self,
        spec: ShardSpec,
        size: int,
        make_steps: Callable[[str], list[Step]],
        timeout_s: float,
    ) -> Group:
        store = host_store(size, timeout_s)
        cores = _core_shares(size) if spec.device == "cpu" else None
        # A draft worker (itself a daemon process) spawns its draft's ranks: allowed, as they
        # are daemons that end with it.
        mp.current_process().daemon = False
        block = collectives.SharedBlock.allocate(size)  # the ranks share this host
        ctx = mp.get_context("spawn")
        for rank in range(1, size):
            args = (
                spec,
                store.port,
                rank,
                size,
                timeout_s,
                make_steps,
                cores and cores[rank],
                block,
            )
            proc = ctx.Process(target=_serve, args=args, daemon=True)
            proc.start()
            self.procs.append(proc)
        if cores is not None:
            os.sched_setaffinity(0, cores[0])
            torch.set_num_threads(len(cores[0]))
        keys = [f"up{rank}" for rank in range(1, size)]
        if problem := await_keys(store, keys, self.procs, timeout_s):
            self._stop(time.monotonic())
            raise RuntimeError(f"a tensor-parallel rank {problem}")
        group = private_group(store.port, 0, size, timeout_s, store)
        collectives.register(group.name, block, 0, size)
        return group

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(RuntimeError):  # a rank is gone already
            self.group.broadcast(("exit",), timeout=datetime.timedelta(seconds=10))
        self._stop(time.monotonic() + 10)
        collectives.unregister(self.group.name)
        if self.group.store is not None:  # a private group: its name (by its store's port) is
            # free again, for a later group whose store the OS gives the same port
            name: Any = self.group.name  # a plain str at run time (GroupName in the stubs)
            torch._C._distributed_c10d._unregister_process_group(name)
        if self._made_world:  # torchrun's world, set up here: torn down before the interpreter
            # is (a gloo thread left running aborted about one exit in twelve)
            dist.destroy_process_group()
        os.sched_setaffinity(0, self._affinity)
        torch.set_num_threads(self._threads)

    def _stop(self, deadline: float) -> None:
        for proc in self.procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()


def _core_shares(size: int) -> list[set[int]] | None:
    """Each rank's CPU cores: this process's cores in `size` contiguous shares."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < size:
        return None
    n = len(cores) // size
    return [set(cores[r * n : (r + 1) * n]) for r in range(size)]


def _serve(
    spec: ShardSpec,
    port: int,
    rank: int,
    size: int,
    timeout_s: float,
    make_steps: Callable[[str], list[Step]],
    cores: set[int] | None,
    block: torch.Tensor,
) -> None:
    faulthandler.enable()
    if cores is not None:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    group = private_group(port, rank, size, timeout_s)
    collectives.register(group.name, block, rank, size)
    follow(spec, group, make_steps)
