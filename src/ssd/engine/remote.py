"""The drafter in its own process: a separate device (or CPU core) from the target.

Transport is a private two-process gloo group (tensors are staged through host memory, so it
works for two processes sharing one GPU too; no global torch.distributed state, so several
engines can share a process and a machine). Per round the target sends ONE small control
message — the batch, plus the previous round's outcome and any admitted or finished requests
piggybacked — and the worker replies with the speculation (hit flags; tokens [B, K];
point-mass flags; q [B, K, V]). The worker answers first and only then prepares the next round
(SSD: glue, fork, tree decode), so that work overlaps the target's verification.

A worker that dies or does not answer within the timeout raises `DraftFailure` on the target
side; the request loop then carries on with an in-process drafter (`SpecRunner`).
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssd.engine.drafters import DraftConfig, make_drafter
from ssd.engine.rendezvous import await_keys, host_store, pickled, unpickled
from ssd.engine.requests import Request
from ssd.engine.speculation import DraftFailure, LocalDrafter, Speculation

TARGET, DRAFT = 0, 1


class Channel:
    """Tensors and pickled objects between the two ranks of a private gloo group."""

    def __init__(self, store: dist.Store, rank: int, timeout_s: float):
        # A gloo backend object, not a registered group (its stubs omit send and recv).
        self.pg: Any = dist.ProcessGroupGloo(store, rank, 2, datetime.timedelta(seconds=timeout_s))
        self.peer = 1 - rank

    def send(self, t: torch.Tensor, timeout_s: float | None = None) -> None:
        self._wait(self.pg.send([t], self.peer, 0), timeout_s)

    def recv(self, t: torch.Tensor, timeout_s: float | None = None) -> torch.Tensor:
        self._wait(self.pg.recv([t], self.peer, 0), timeout_s)
        return t

    def send_obj(self, obj: Any, timeout_s: float | None = None) -> None:
        data = pickled(obj)
        self.send(torch.tensor([data.numel()]), timeout_s)
        self.send(data, timeout_s)

    def recv_obj(self, timeout_s: float | None = None) -> Any:
        n = int(self.recv(torch.zeros(1, dtype=torch.int64), timeout_s))
        return unpickled(self.recv(torch.empty(n, dtype=torch.uint8), timeout_s))

    @staticmethod
    def _wait(work: Any, timeout_s: float | None) -> None:
        """Gloo raises RuntimeError when the peer's connection closes or past the timeout
        (the group's own when none is given)."""
        if timeout_s is None:
            work.wait()
        else:
            work.wait(datetime.timedelta(seconds=timeout_s))


def _use_cores(cores: set[int]) -> None:
    """This thread (and the pool threads it starts) on `cores`, one thread each."""
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))


class _CoreSplit:
    """This process's CPU cores between its target and its draft workers.

    The first engine with a draft process on CPU narrows the process to the target's cores
    (one thread per core); later engines split the cores as they were before that, so their
    drafts get the last core too instead of sharing the target's; the last to close gives the
    process back its cores and threads.
    """

    engines: ClassVar[int] = 0
    cores: ClassVar[set[int]] = set()  # the process's, before the first engine narrowed them
    threads: ClassVar[int] = 0

    @classmethod
    def plan(cls) -> tuple[set[int], set[int]] | None:
        """(target cores, draft cores), the draft on the last; None on a single core."""
        whole = sorted(cls.cores if cls.engines else os.sched_getaffinity(0))
        return (set(whole[:-1]), {whole[-1]}) if len(whole) >= 2 else None

    @classmethod
    def narrow(cls, target: set[int]) -> None:
        if not cls.engines:
            cls.cores, cls.threads = os.sched_getaffinity(0), torch.get_num_threads()
        cls.engines += 1
        _use_cores(target)

    @classmethod
    def give_back(cls) -> None:
        cls.engines -= 1
        if not cls.engines:
            os.sched_setaffinity(0, cls.cores)
            torch.set_num_threads(cls.threads)


class RemoteDrafter:
    """The target-side proxy of a drafter running in a worker process.

    The worker has `startup_timeout_s` to load the draft and answer its first round, and
    `timeout_s` for each later answer; past either, or when it dies, `speculate` raises
    `DraftFailure` (and the worker is stopped).
    """

    def __init__(
        self, cfg: DraftConfig, timeout_s: float = 120.0, startup_timeout_s: float = 900.0
    ):
        self.k = cfg.k
        self.device = torch.device(cfg.device)
        self.timeout_s, self._first_timeout_s = timeout_s, startup_timeout_s
        store = host_store(2, startup_timeout_s)
        cores = _CoreSplit.plan() if self.device.type == "cpu" else None
        ctx = mp.get_context("spawn")
        # Messages sent so far, in shared memory: the worker reads it between draft passes to
        # tell whether the target already waits (`_Incoming`).
        self._sent = ctx.RawValue("q", 0)
        self.proc = ctx.Process(
            target=_serve, args=(cfg, store.port, cores, self._sent), daemon=True
        )
        self.proc.start()
        if problem := await_keys(store, ["worker"], [self.proc], startup_timeout_s):
            self.proc.kill()
            raise DraftFailure(f"the draft process {problem}")
        self.chan = Channel(store, TARGET, startup_timeout_s)
        self._store = store  # the worker's rendezvous: kept alive with the group
        self._narrowed = cores is not None
        if cores is not None:  # one thread per core left to the target: never oversubscribe
            _CoreSplit.narrow(cores[0])
        self._pending: dict[str, Any] = {"admit": [], "release": [], "observe": None}
        self.busy_seconds = 0.0
        self.closed = False

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
        if self.closed:
            raise DraftFailure("the draft process was stopped")
        timeout = self._first_timeout_s or self.timeout_s
        try:
            msg = {"cmd": "spec", "ids": [r.id for r in batch], **self._pending}
            self._sent.value += 1
            self.chan.send_obj(msg, timeout)
            self._pending = {"admit": [], "release": [], "observe": None}
            head = self.chan.recv_obj(timeout)
            shape = head["shape"]
            tokens = self.chan.recv(torch.empty(shape[:2], dtype=torch.int64), timeout)
            point = self.chan.recv(torch.empty(shape[0], dtype=torch.uint8), timeout)
            q = None
            if head["has_q"]:
                q = self.chan.recv(torch.empty(shape, dtype=torch.float32), timeout)
                q = q.to(self.device)
        except RuntimeError as e:  # gloo: the peer closed the connection, or the wait timed out
            state = "died" if not self.proc.is_alive() else f"did not answer in {timeout:g} s"
            self.close()
            raise DraftFailure(f"the draft process {state} ({str(e).splitlines()[0][:120]})") from e
        self._first_timeout_s = 0.0
        self.busy_seconds = head["busy"]
        return Speculation(tokens.to(self.device), q, point.bool().to(self.device), head["hit"])

    def close(self) -> None:
        """Stop the worker (asked first; killed if it does not exit) and give back the cores."""
        if self.closed:
            return
        self.closed = True
        if self.proc.is_alive():
            with contextlib.suppress(RuntimeError):  # it stopped listening: killed below
                self._sent.value += 1
                self.chan.send_obj({"cmd": "exit"}, timeout_s=5)
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        del self.chan  # the group's sockets
        self._give_back_cores()

    def _give_back_cores(self) -> None:
        if self._narrowed:
            self._narrowed = False
            _CoreSplit.give_back()


def _serve(cfg: DraftConfig, port: int, cores: tuple[set[int], set[int]] | None, sent: Any) -> None:
    """The draft worker's loop: observe, release, admit, answer, then prepare the next round.

    `cores`: (the target's, the draft's) on CPU. The draft works on its own cores while the
    target verifies, but whenever the target waits for it (the answer: a missed round's
    drafting; the end of a preparation that outlasts the verification, seen by the target's
    next message arriving between draft passes) it takes the target's cores too; the kernels
    give the same bits on any number of threads.
    """
    faulthandler.enable()
    own, every = (cores[1], cores[0] | cores[1]) if cores is not None else (set(), set())
    if cores is not None:
        _use_cores(own)
    store = dist.TCPStore("127.0.0.1", port, 2, False)
    store.set("worker", "up")
    # The target may verify for long between messages: the worker waits for it without limit
    # and exits when the target's side of the connection closes.
    chan = Channel(store, DRAFT, timeout_s=10 * 365 * 24 * 3600)
    drafter: LocalDrafter = make_drafter(cfg)
    mirrors: dict[int, Request] = {}
    drafted: dict[int, list[int]] = {}
    busy = 0.0
    incoming = _Incoming(chan, sent)
    while (msg := incoming.read())["cmd"] != "exit":
        start = time.perf_counter()
        if msg["observe"] is not None:
            ids, accepted, token, seconds = msg["observe"]
            batch = [mirrors[i] for i in ids]
            drafter.observe(batch, accepted, token, seconds)
            for r, a, t in zip(batch, accepted, token, strict=True):
                r.out += [*drafted[r.id][:a], t]
        for i in msg["release"]:  # before admitting: their pages return first
            drafter.release(mirrors.pop(i))
            drafted.pop(i, None)
        new = [Request(i, p, sp, seed, frozenset(), out) for i, p, sp, seed, out in msg["admit"]]
        mirrors.update({r.id: r for r in new})
        if new:
            drafter.admit(new)
        batch = [mirrors[i] for i in msg["ids"]]
        if cores is not None:
            _use_cores(every)
        spec = drafter.answer(batch)
        if cores is not None:
            _use_cores(own)
        tokens = spec.tokens.cpu()
        chan.send_obj(
            {
                "hit": spec.hit,
                "has_q": spec.q is not None,
                "shape": (*tokens.shape, drafter.vocab_size),
                "busy": busy,
            }
        )
        chan.send(tokens)
        chan.send(spec.point_mass.to(torch.uint8).cpu())
        if spec.q is not None:
            chan.send(spec.q.float().cpu().contiguous())
        drafted.update({r.id: row for r, row in zip(batch, tokens.tolist(), strict=False)})
        incoming = _Incoming(chan, sent, incoming.number, every)
        drafter.prepare(batch, spec, incoming.poll if cores is not None else None)
        busy = time.perf_counter() - start
    drafter.close()  # a sharded draft's ranks


class _Incoming:
    """The target's next message (number `after` + 1). `poll`, between draft passes, sees it sent
    in the count the target keeps in shared memory (`sent`; a posted gloo receive reports
    completion only once waited on): the target then waits, and the rest of the preparation
    runs on `widen_to` (every core) too."""

    def __init__(self, chan: Channel, sent: Any, after: int = 0, widen_to: set[int] | None = None):
        self.chan, self.sent, self.number, self.widen_to = chan, sent, after + 1, widen_to

    def poll(self) -> None:
        if self.widen_to and self.sent.value >= self.number:
            _use_cores(self.widen_to)
            self.widen_to = None

    def read(self) -> dict[str, Any]:
        """The message; "exit" when the target is gone (its connection closed)."""
        try:
            return dict(self.chan.recv_obj())
        except RuntimeError:
            return {"cmd": "exit"}
