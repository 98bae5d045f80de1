"""The drafter in its own process: a separate device (or CPU core) from the target.

Transport is torch.distributed (gloo; tensors are staged through host memory, so it works for
two processes sharing one GPU too). Per round the target sends ONE small control message —
the batch, plus the previous round's outcome and any admitted or finished requests piggybacked
— and the worker replies with the speculation (hit flags; tokens [B, K]; point-mass flags;
q [B, K, V]). The worker answers first and only then prepares the next round (SSD: glue, fork,
tree decode), so that work overlaps the target's verification.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import pickle
import socket
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssd.engine.drafters import DraftConfig, make_drafter
from ssd.engine.requests import Request
from ssd.engine.speculation import LocalDrafter, Speculation

TARGET, DRAFT = 0, 1


def send_obj(obj: Any, dst: int) -> None:
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    dist.send(torch.tensor([data.numel()]), dst)
    dist.send(data, dst)


def recv_obj(src: int) -> Any:
    n = torch.zeros(1, dtype=torch.int64)
    dist.recv(n, src)
    data = torch.empty(int(n), dtype=torch.uint8)
    dist.recv(data, src)
    return pickle.loads(data.numpy().tobytes())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cores() -> tuple[set[int], set[int]] | None:
    """Target and draft CPU cores: the draft gets the last core, the target the others."""
    cores = sorted(os.sched_getaffinity(0))
    return (set(cores[:-1]), {cores[-1]}) if len(cores) >= 2 else None


class RemoteDrafter:
    """The target-side proxy of a drafter running in a worker process."""

    def __init__(self, cfg: DraftConfig, timeout_s: float = 900.0):
        self.k = cfg.k
        self.device = torch.device(cfg.device)
        port = _free_port()
        self._affinity = os.sched_getaffinity(0)
        cores = _cores() if self.device.type == "cpu" else None
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(
            target=_serve, args=(cfg, port, cores and cores[1], timeout_s), daemon=True
        )
        self.proc.start()
        if dist.is_initialized():
            raise RuntimeError("torch.distributed is already initialized in this process")
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=TARGET,
            world_size=2,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        self._threads = torch.get_num_threads()
        if cores is not None:  # one thread per core left to the target: never oversubscribe
            os.sched_setaffinity(0, cores[0])
            torch.set_num_threads(len(cores[0]))
        self._pending: dict[str, Any] = {"admit": [], "release": [], "observe": None}
        self.busy_seconds = 0.0

    def admit(self, reqs: Sequence[Request]) -> None:
        self._pending["admit"] += [(r.id, r.prompt, r.params, r.seed, list(r.out)) for r in reqs]

    def release(self, req: Request) -> None:
        self._pending["release"].append(req.id)

    def observe(
        self,
        batch: Sequence[Request],
        accepted: Sequence[int],
        token: Sequence[int],
        seconds: float,
    ) -> None:
        self._pending["observe"] = ([r.id for r in batch], list(accepted), list(token), seconds)

    def speculate(self, batch: Sequence[Request]) -> Speculation:
        send_obj({"cmd": "spec", "ids": [r.id for r in batch], **self._pending}, DRAFT)
        self._pending = {"admit": [], "release": [], "observe": None}
        head = recv_obj(DRAFT)
        tokens = torch.empty(head["shape"][:2], dtype=torch.int64)
        point = torch.empty(head["shape"][0], dtype=torch.uint8)
        dist.recv(tokens, DRAFT)
        dist.recv(point, DRAFT)
        q = None
        if head["has_q"]:
            q = torch.empty(head["shape"], dtype=torch.float32)
            dist.recv(q, DRAFT)
            q = q.to(self.device)
        self.busy_seconds = head["busy"]
        return Speculation(tokens.to(self.device), q, point.bool().to(self.device), head["hit"])

    def close(self) -> None:
        if self.proc.is_alive():
            send_obj({"cmd": "exit"}, DRAFT)
            self.proc.join(timeout=30)
        if dist.is_initialized():
            dist.destroy_process_group()
        os.sched_setaffinity(0, self._affinity)
        torch.set_num_threads(self._threads)


def _serve(cfg: DraftConfig, port: int, cores: set[int] | None, timeout_s: float) -> None:
    """The draft worker's loop: observe, release, admit, answer, then prepare the next round."""
    faulthandler.enable()
    if cores is not None:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=DRAFT,
        world_size=2,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    drafter: LocalDrafter = make_drafter(cfg)
    mirrors: dict[int, Request] = {}
    drafted: dict[int, list[int]] = {}
    busy = 0.0
    while (msg := recv_obj(TARGET))["cmd"] != "exit":
        start = time.perf_counter()
        if msg["observe"] is not None:
            ids, accepted, token, seconds = msg["observe"]
            batch = [mirrors[i] for i in ids]
            drafter.observe(batch, accepted, token, seconds)
            for r, a, t in zip(batch, accepted, token, strict=True):
                r.out += [*drafted[r.id][:a], t]
        for i in msg["release"]:  # before admitting: a new request may reuse a finished id
            drafter.release(mirrors.pop(i))
            drafted.pop(i, None)
        new = [Request(i, p, sp, seed, frozenset(), out) for i, p, sp, seed, out in msg["admit"]]
        mirrors.update({r.id: r for r in new})
        if new:
            drafter.admit(new)
        batch = [mirrors[i] for i in msg["ids"]]
        spec = drafter.answer(batch)
        tokens = spec.tokens.cpu()
        send_obj(
            {
                "hit": spec.hit,
                "has_q": spec.q is not None,
                "shape": (*tokens.shape, drafter.vocab_size),
                "busy": busy,
            },
            TARGET,
        )
        dist.send(tokens, TARGET)
        dist.send(spec.point_mass.to(torch.uint8).cpu(), TARGET)
        if spec.q is not None:
            dist.send(spec.q.float().cpu().contiguous(), TARGET)
        drafted.update({r.id: row for r, row in zip(batch, tokens.tolist(), strict=False)})
        drafter.prepare(batch, spec)
        busy = time.perf_counter() - start
    dist.destroy_process_group()
