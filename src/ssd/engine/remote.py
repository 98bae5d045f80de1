"""The drafter in its own process: a separate device (or CPU core) from the target.

The two processes meet in shared memory, one `Mailbox` each way (tensors are staged through
host memory, so it works for two processes sharing one GPU too; nothing global, so several
engines can share a process and a machine). Per round the target sends ONE small control
message — the batch, plus the previous round's outcome and any admitted or finished requests
piggybacked — and the worker replies with the speculation (hit flags; tokens [B, K];
point-mass flags; q [B, K, V]). The worker answers first and only then prepares the next round
(SSD: fork, tree decode), so that work overlaps the target's verification.

A worker that dies or does not answer within the timeout raises `DraftFailure` on the target
side; the request loop then carries on with an in-process drafter (`SpecRunner`).
"""

from __future__ import annotations

import faulthandler
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssd.engine.drafters import DraftConfig, make_drafter
from ssd.engine.mailbox import Mailbox, PeerGone, Waiter
from ssd.engine.rendezvous import await_keys, host_store
from ssd.engine.requests import Request
from ssd.engine.speculation import DraftFailure, LocalDrafter, Speculation

# How long each side spins for the other's message before napping: the target for an answer
# (milliseconds from the cache; a missed round's drafting, which then has the target's core
# too, barely notices a thread that yields it at every turn), the worker, on its own core, for
# the target's next message (about a verification). Past the spin, a nap of up to 2 ms.
TARGET_SPIN_S, WORKER_SPIN_S = 0.25, 0.5


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
        blocks = (Mailbox.allocate(), Mailbox.allocate())
        self.to_draft, self.to_target = map(Mailbox, blocks)
        self.proc = ctx.Process(target=_serve, args=(cfg, store.port, cores, blocks), daemon=True)
        self.proc.start()
        if problem := await_keys(store, ["worker"], [self.proc], startup_timeout_s):
            self.proc.kill()
            raise DraftFailure(f"the draft process {problem}")
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
        wait = Waiter(TARGET_SPIN_S, timeout, self.proc.is_alive, "the draft process")
        try:
            msg = {"cmd": "spec", "ids": [r.id for r in batch], **self._pending}
            self.to_draft.send(msg, [], wait)
            self._pending = {"admit": [], "release": [], "observe": None}
            head, (tokens, point, *q) = self.to_target.recv(wait)
        except PeerGone as e:
            self.close()
            raise DraftFailure(str(e)) from e
        self._first_timeout_s = 0.0
        self.busy_seconds = head["busy"]
        dev = self.device
        spec_q = q[0].to(dev) if q else None
        return Speculation(tokens.to(dev), spec_q, point.bool().to(dev), head["hit"])

    def close(self) -> None:
        """Stop the worker (asked first; killed if it does not exit) and give back the cores."""
        if self.closed:
            return
        self.closed = True
        if self.proc.is_alive():
            try:
                self.to_draft.send({"cmd": "exit"}, [], Waiter(0, 5, self.proc.is_alive))
                self.proc.join(timeout=10)
            except PeerGone:  # it stopped listening: killed below
                pass
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self._give_back_cores()

    def _give_back_cores(self) -> None:
        if self._narrowed:
            self._narrowed = False
            _CoreSplit.give_back()


def _serve(
    cfg: DraftConfig,
    port: int,
    cores: tuple[set[int], set[int]] | None,
    blocks: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """The draft worker's loop: observe, release, admit, answer, then prepare the next round.

    `cores`: (the target's, the draft's) on CPU. The draft works on its own cores while the
    target verifies, but whenever the target waits for its passes (an answer that drafts: a
    missed round, or any round of SD; the end of a preparation that outlasts the verification,
    seen by the target's next message arriving between draft passes) it takes the target's
    cores too; the kernels give the same bits on any number of threads.
    """
    faulthandler.enable()
    own, every = (cores[1], cores[0] | cores[1]) if cores is not None else (set(), set())
    if cores is not None:
        _use_cores(own)
    inbox, outbox = map(Mailbox, blocks)
    parent = os.getppid()
    # The target may verify for long between messages: the worker waits for it without limit
    # and exits when the target's process is gone.
    wait = Waiter(WORKER_SPIN_S, None, lambda: os.getppid() == parent, "the target")
    store = dist.TCPStore("127.0.0.1", port, 2, False)
    store.set("worker", "up")
    drafter: LocalDrafter = make_drafter(cfg)
    mirrors: dict[int, Request] = {}
    drafted: dict[int, list[int]] = {}
    busy = 0.0
    incoming = _Incoming(inbox, wait)
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
        # An answer from the cache is a few small copies: only drafting takes every core
        spec = drafter.answer(batch, (lambda: _use_cores(every)) if cores is not None else None)
        if cores is not None:
            _use_cores(own)
        tokens = spec.tokens.cpu()
        head = {"hit": spec.hit, "busy": busy}
        parts = [tokens, spec.point_mass.to(torch.uint8)]
        parts += [] if spec.q is None else [spec.q.float()]
        try:
            outbox.send(head, parts, wait)
        except PeerGone:
            break
        drafted.update({r.id: row for r, row in zip(batch, tokens.tolist(), strict=False)})
        incoming = _Incoming(inbox, wait, every)
        drafter.prepare(batch, spec, incoming.poll if cores is not None else None)
        busy = time.perf_counter() - start
    drafter.close()  # a sharded draft's ranks


class _Incoming:
    """The target's next message. `poll`, between draft passes, sees it arriving in the shared
    buffer before it is read: the target then waits, and the rest of the preparation runs on
    `widen_to` (every core) too."""

    def __init__(self, inbox: Mailbox, wait: Waiter, widen_to: set[int] | None = None):
        self.inbox, self.wait, self.widen_to = inbox, wait, widen_to

    def poll(self) -> None:
        if self.widen_to and self.inbox.arrived():
            _use_cores(self.widen_to)
            self.widen_to = None

    def read(self) -> dict[str, Any]:
        """The message; "exit" when the target is gone."""
        try:
            return dict(self.inbox.recv(self.wait)[0])
        except PeerGone:
            return {"cmd": "exit"}
