"""Drafters: what to draft each round, for SD and SSD (Saguaro).

A drafter owns a `DraftModel` (the draft, its paged KV cache and steps) and, for SSD, the
speculation cache. The target never sees any of it: it receives a `Speculation` and returns
the outcome.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ssd import saguaro
from ssd.engine.draft_model import DraftModel, Tree
from ssd.engine.requests import Request
from ssd.engine.speculation import Speculation, pad_rows
from ssd.jit import pow2


class SDDrafter:
    """Ordinary speculative decoding: draft K tokens from the committed prefix each round, or
    fewer with `stop_below` (`DraftModel.draft`)."""

    def __init__(self, draft: DraftModel, stop_below: float | None = None):
        self.d, self.k, self.stop_below = draft, draft.k, stop_below
        self.vocab_size = draft.model.cfg.vocab_size
        self.busy_seconds = 0.0

    def admit(self, reqs: Sequence[Request]) -> None:
        self.d.admit(reqs)

    def release(self, req: Request) -> None:
        self.d.release(req)

    def close(self) -> None:
        self.d.close()

    def observe(
        self,
        batch: Sequence[Request],
        accepted: Sequence[int],
        token: Sequence[int],
        seconds: float,
    ) -> None:
        pass

    def speculate(self, batch: Sequence[Request]) -> Speculation:
        """Answer the round, then prepare the next one (a remote worker replies in between)."""
        start = time.perf_counter()
        spec = self.answer(batch)
        self.prepare(batch, spec)
        self.busy_seconds = time.perf_counter() - start
        return spec

    def answer(
        self, batch: Sequence[Request], drafting: Callable[[], None] | None = None
    ) -> Speculation:
        if drafting is not None:
            drafting()
        tokens, q, _ = self.d.draft(batch, None, None, self.stop_below)
        point = torch.full((tokens.shape[0],), q is None, dtype=torch.bool, device=tokens.device)
        return Speculation(tokens, q, point, [None] * len(batch))

    def prepare(
        self, batch: Sequence[Request], spec: Speculation, between: Callable[[], None] | None = None
    ) -> None:
        """Work for the next round that can overlap this round's verification (none in SD)."""


@dataclasses.dataclass
class _Cache:
    """The speculation cache built in the last round: per request row, M outcome branches of K
    tree steps (`Tree`). A branch that started a step late holds K-1 tokens, at steps 1..K-1."""

    rows: dict[int, int]
    primary: list[bool]  # row built with its primary fan-out (not after a fast backup)
    fanouts: list[list[int]]  # each row's primary fan-out that round
    sent: list[list[float]]  # ranked fan-out: the draft's probability of each token sent
    cands: saguaro.Candidates
    tree: Tree


@dataclasses.dataclass
class _Carry:
    """How much of its glue a round's speculation [r, s_1..s_L] already holds (computed while
    drafting it): the draft's logits after r, s_1, .. [b, L+1, V] and their KV, at the flat slots
    of the cached branch it came from [b, L+1] (-1: none), or None where the backup's chain wrote
    it in place. Where `last` [b] is False the KV and logits after s_L are still to come (the
    tree's first step computes them) and the last logits row is a stand-in, the one before it."""

    logits: Tensor
    last: Tensor
    slots: Tensor | None


@dataclasses.dataclass
class _Round:
    """What SSD decided answering a round, read again when preparing the next one and when the
    round's outcome comes back (`observe`)."""

    hit: list[bool]
    kind: str  # the backup that drafted the missed rows: "neural" or "fast"
    branch: tuple[Tensor, Tensor] | None  # cache rows and branches the hits were read from
    carry: _Carry | None = None  # None: the build runs a glue pass
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


class SSDDrafter(SDDrafter):
    """Saguaro: answer each round from the speculation cache (backup on a miss), then build the
    cache for every likely outcome of the round just sent.

    `backup` is "neural" (draft just in time), "fast" (n-gram guess, a point mass) or "auto"
    (per round, by the batch speed model of docs/design.md §2 with the measured statistics).
    With `stop_below`, a neural backup for a batch that missed everywhere stops early as SD's
    drafting does. `fanout` is a fixed list, Saguaro's geometric estimator, or
    `saguaro.RankedFanout`: each round's branches on the outcomes the draft finds likeliest. A
    fixed or geometric fan-out gives, on a speculation shorter than K, the share of the depths
    not drafted to the doubted token's (`_fold`), and after a fast backup its budget to depth 0.

    The logits and KV along a speculation come from the pass that drafted it (a tree branch, or
    the chain of a batch that missed everywhere), so building the next cache needs no glue pass
    over it: the tree's first step feeds the last drafted token beside the branches, and the
    branches after accepting everything start one step later (`_Carry`). A batch mixing hits
    with backups, or an n-gram guess, has its glue computed by a pass of its own.
    """

    def __init__(
        self,
        draft: DraftModel,
        fanout: Sequence[int] | saguaro.FanoutEstimator | saguaro.RankedFanout,
        saguaro_c: float,
        backup: str,
        stop_below: float | None = None,
    ):
        super().__init__(draft, stop_below)
        # Each request plans its own fan-out from its own statistics, so its tokens never
        # depend on what else shares its batch.
        self.template = fanout if isinstance(fanout, saguaro.FanoutEstimator) else None
        self.ranked = fanout if isinstance(fanout, saguaro.RankedFanout) else None
        self.estimators: dict[int, saguaro.FanoutEstimator] = {}
        self.trusts: dict[int, saguaro.TrustEstimator] = {}
        if isinstance(fanout, saguaro.FanoutEstimator):
            fanout = fanout.fanout()
        elif isinstance(fanout, saguaro.RankedFanout):  # Saguaro sampling's F: the prior's
            fanout = saguaro.geometric_fanout(fanout.budget, self.k, 0.7, 1.0)
        saguaro.check_fanout(fanout, self.k, self.vocab_size)
        if backup not in saguaro.BACKUPS:
            raise ValueError(f"backup must be one of {saguaro.BACKUPS}, got {backup!r}")
        self.fanout, self.c, self.backup = list(fanout), saguaro_c, backup
        self.budget = sum(fanout)
        self.fast_fanout = saguaro.backup_fanout(self.budget, self.k)
        self.cache: _Cache | None = None
        self.outcome: dict[int, tuple[int, int]] = {}
        self.policy = saguaro.BackupPolicy()
        self.round: _Round | None = None  # the round answered last, until its outcome arrives
        # A list to log each round's draft view and outcome into (benchmarks/fanout_replay.py)
        self.record: list[dict] | None = None
        self._seen: dict[int, dict] = {}
        # Carry the glue (above); K = 1 leaves a late branch no token, and a record logs the
        # true logits after the last drafted token.
        self.carry_glue = self.k >= 2

    def observe(
        self,
        batch: Sequence[Request],
        accepted: Sequence[int],
        token: Sequence[int],
        seconds: float,
    ) -> None:
        pol, rd = self.policy, self.round
        assert rd is not None, "observe() before speculate()"
        for r, a, t, h in zip(batch, accepted, token, rd.hit, strict=True):
            self.outcome[r.id] = (a, t)
            if h and self.template is not None:
                self._estimator(r.id).observe_round(a)
            pol.update("p_hit", float(h))
            pol.update("e_hit" if h else f"e_{rd.kind}", a + 1.0)
        if seconds > 0:
            pol.update("t_build", rd.seconds["build"] / seconds)
            if "neural" in rd.seconds:
                pol.update("t_neural", rd.seconds["neural"] / seconds)

    def release(self, req: Request) -> None:
        super().release(req)
        self.outcome.pop(req.id, None)
        self.estimators.pop(req.id, None)
        self.trusts.pop(req.id, None)
        self._seen.pop(req.id, None)

    def _estimator(self, rid: int) -> saguaro.FanoutEstimator:
        assert self.template is not None
        if rid not in self.estimators:
            self.estimators[rid] = dataclasses.replace(self.template, by_fanout={})
        return self.estimators[rid]

    def _trust(self, rid: int) -> saguaro.TrustEstimator:
        assert self.ranked is not None
        if rid not in self.trusts:
            self.trusts[rid] = saguaro.TrustEstimator(self.ranked.prior)
        return self.trusts[rid]

    def _fanouts(self, batch: Sequence[Request], b: int) -> list[list[int]]:
        """The primary fan-out of each row (padding rows: the default)."""
        if self.template is None:
            return [self.fanout] * b
        return [self._estimator(r.id).fanout() for r in batch] + [self.fanout] * (b - len(batch))

    def _saguaro(self, batch: Sequence[Request], b: int) -> tuple[Tensor | None, Tensor | None]:
        if self.c >= 1:
            return None, None
        rows = [[x + 1 for x in f[: self.k]] for f in self._fanouts(batch, b)]
        f = torch.tensor(rows, device=self.d.device)
        return f, torch.full((b,), self.c, device=self.d.device)

    def answer(
        self, batch: Sequence[Request], drafting: Callable[[], None] | None = None
    ) -> Speculation:
        dev, k = self.d.device, self.k
        b = pow2(len(batch))
        hit, branch = self._lookup(batch)
        kind = self.backup if self.backup != "auto" else self.policy.choose(len(batch))
        f, c = self._saguaro(batch, b)
        self.round = rd = _Round(hit, kind, branch)
        carry = self.carry_glue and self.record is None
        start = time.perf_counter()
        if all(hit):
            assert branch is not None
            tokens, q, held = self._from_cache(batch, branch)
            rd.carry = held if carry else None
            point = torch.full((b,), q is None, dtype=torch.bool, device=dev)
        else:
            if kind == "neural":  # a batch with hits needs K tokens on every row
                if drafting is not None:
                    drafting()
                stop = None if any(hit) else self.stop_below
                tokens, q, logits = self.d.draft(batch, f, c, stop)
                rd.seconds["neural"] = time.perf_counter() - start
                if carry and not any(hit):  # the chain wrote its KV in place
                    last = torch.zeros(b, dtype=torch.bool, device=dev)
                    rd.carry = _Carry(torch.cat([logits, logits[:, -1:]], 1), last, None)
            else:  # n-gram guesses: point masses, which need no q rows
                guesses = [saguaro.ngram_guess(r.prompt + r.out, k) for r in batch]
                guesses += [[0] * k] * (b - len(batch))
                tokens, q = torch.tensor(guesses, dtype=torch.int64, device=dev), None
            point = torch.full((b,), q is None, dtype=torch.bool, device=dev)
            if branch is not None and any(hit):
                tokens, q, point = self._merge_hits(batch, hit, branch, tokens, q, point)
        return Speculation(tokens, q, point, list(hit))

    def prepare(
        self, batch: Sequence[Request], spec: Speculation, between: Callable[[], None] | None = None
    ) -> None:
        rd = self.round
        assert rd is not None, "prepare() before answer()"
        start = time.perf_counter()
        self._build(batch, spec.tokens, [bool(h) for h in spec.hit], rd, between)
        rd.seconds["build"] = time.perf_counter() - start

    def _lookup(self, batch: Sequence[Request]) -> tuple[list[bool], tuple[Tensor, Tensor] | None]:
        """Per row: does the cache hold the branch of last round's outcome; and where (cache
        rows, branches) the hits are."""
        cache = self.cache
        if cache is None:
            return [False] * len(batch), None
        rows = [cache.rows.get(r.id, -1) for r in batch]
        known = [r.id in self.outcome and row >= 0 for r, row in zip(batch, rows, strict=True)]
        if not any(known):
            return [False] * len(batch), None
        idx = torch.tensor([max(row, 0) for row in rows], device=self.d.device)
        acc = torch.tensor(
            [self.outcome.get(r.id, (-1, -1))[0] for r in batch], device=self.d.device
        )
        tok = torch.tensor(
            [self.outcome.get(r.id, (-1, -1))[1] for r in batch], device=self.d.device
        )
        sub = saguaro.Candidates(cache.cands.token[idx], cache.cands.depth[idx])
        found = saguaro.lookup(sub, acc, tok, torch.tensor(known, device=self.d.device))
        hits = [bool(h) for h in found.hit.tolist()]
        if self.ranked is not None:
            for r, ok, row, n in zip(batch, known, rows, acc.tolist(), strict=True):
                if ok:
                    self._trust(r.id).observe(cache.sent[row], n)
        if self.record is not None:
            for r, ok, h in zip(batch, known, hits, strict=True):
                if ok and r.id in self._seen:
                    a, t = self.outcome[r.id]
                    self.record.append(self._seen.pop(r.id) | {"accepted": a, "token": t, "hit": h})
        if self.template is not None:
            for r, ok, row, h, n in zip(batch, known, rows, hits, acc.tolist(), strict=True):
                if ok and cache.primary[row]:
                    self._estimator(r.id).observe_lookup(h, cache.fanouts[row][n])
        return hits, (idx, found.branch)

    def _merge_hits(
        self,
        batch: Sequence[Request],
        hit: list[bool],
        branch: tuple[Tensor, Tensor],
        tokens: Tensor,
        q: Tensor | None,
        point: Tensor,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The cached speculation on rows that hit, the backup's elsewhere, both cut to the
        shorter (a late branch holds K-1 tokens; a prefix of a proposal is one too). A row
        without q rows (a greedy cache, an n-gram guess) is verified as a point mass."""
        cached_t, cached_q, _ = self._from_cache(batch, branch)
        n = min(cached_t.shape[1], tokens.shape[1])
        cached_t, tokens = cached_t[:, :n], tokens[:, :n]
        cached_q = None if cached_q is None else cached_q[:, :n]
        q = None if q is None else q[:, :n]
        h = pad_rows(torch.tensor(hit, device=tokens.device), tokens.shape[0])
        tokens = torch.where(h[:, None], cached_t, tokens)
        point = torch.where(h, cached_q is None, point)
        if cached_q is not None:
            base = torch.zeros_like(cached_q) if q is None else q
            q = torch.where(h[:, None, None], cached_q, base)
        return tokens, q, point

    def _from_cache(
        self, batch: Sequence[Request], where: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor | None, _Carry]:
        """The cached branches at `where` (cache rows, branches) as one speculation of the
        length all of them hold (K, or K-1 where one started late), and what it carries."""
        cache = self.cache
        assert cache is not None
        idx, branch = where
        b, k = pow2(len(batch)), self.k
        start = pad_rows(cache.tree.start[idx, branch], b)
        n = k - int(start.max())
        steps = start[:, None] + torch.arange(n + 1, device=start.device)  # [b, n+1]
        held = steps < k
        steps = steps.clamp(max=k - 1)  # past the last step: a stand-in, the step before
        tree = cache.tree

        def pick(x: Tensor, j: Tensor) -> Tensor:  # x [b, K, ...] at steps j [b, m]
            at = j.view(*j.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])
            return x.gather(1, at)

        tokens = pick(pad_rows(tree.tokens[idx, branch], b), steps[:, :n])
        q = None if tree.q is None else pick(pad_rows(tree.q[idx, branch], b), steps[:, :n])
        logits = pad_rows(torch.stack([x[idx, branch] for x in tree.logits], 1), b)
        slots = pick(pad_rows(tree.slots[idx, branch], b, -1), steps)
        carry = _Carry(pick(logits, steps), held[:, n], torch.where(held, slots, -1))
        return tokens, q, carry

    def _build(
        self,
        batch: Sequence[Request],
        tokens: Tensor,
        hit: list[bool],
        rd: _Round,
        between: Callable[[], None] | None = None,
    ) -> None:
        """Glue (or carry the glue), fork and tree-decode the outcomes of the speculation just
        sent (`between`: after the glue and after each tree step)."""
        b, drafted = tokens.shape  # K, or fewer after an early stop or a late branch
        carry = rd.carry
        if carry is None:
            r = [x.out[-1] for x in batch] + [0] * (b - len(batch))
            path = torch.cat([torch.tensor(r, device=self.d.device)[:, None], tokens], 1)
            g = self.d.glue(batch, path)
            if between is not None:
                between()
        else:
            if carry.slots is not None:
                self.d.move(batch, carry.slots)
            g = carry.logits
        temps = [r.params.temperature or 1.0 for r in batch] + [1.0] * (b - len(batch))
        temperature = torch.tensor(temps, device=self.d.device)
        sent: list[list[float]] = []  # the draft's probability of each token sent (ranked)
        if self.ranked is not None:
            top = saguaro.likeliest(g, tokens, self.budget, temperature)
            pad = [self.ranked.prior] * (b - len(batch))
            trust = torch.tensor([self._trust(r.id).trust() for r in batch] + pad, device=g.device)
            fan = saguaro.ranked_fanout(top, self.budget, trust)
            fanouts, primary, sent = fan.tolist(), [False] * b, top.drafted.tolist()
        else:
            fanouts = self._fanouts(batch, b)
            primary = [h or rd.kind == "neural" for h in hit] + [True] * (b - len(hit))
            lists = [f if p else self.fast_fanout for f, p in zip(fanouts, primary, strict=True)]
            if drafted < self.k:  # outcomes 0..drafted only (`_fold`): no lesson for the estimator
                lists = [_fold(f, drafted) for f in lists]
                primary = [False] * b
            fan = saguaro.fanout_rows(lists).to(self.d.device)
            top = saguaro.likeliest(g, tokens, max(max(x) for x in lists), temperature)
        cands = saguaro.fork(top, fan, self.budget)
        if self.record is not None:  # the 64 likeliest outcomes a depth, to replay any budget
            deep = saguaro.likeliest(g, tokens, 64, temperature)
            for i, req in enumerate(batch):
                self._seen[req.id] = {
                    "request": req.id,
                    "fanout": fanouts[i],
                    "sent": deep.drafted[i].tolist(),
                    "top": deep.token[i].tolist(),
                    "prob": deep.prob[i].tolist(),
                }
        late = None  # branches after accepting all, where s_L's logits are still to come
        if carry is not None and not bool(carry.last.all()):
            late = ~carry.last[:, None] & (cands.depth == drafted)
            cands = saguaro.Candidates(torch.where(late, tokens[:, -1:], cands.token), cands.depth)
        f, c = self._saguaro(batch, b)
        tree = self.d.tree(batch, cands, f, c, between, late)
        rows = {x.id: i for i, x in enumerate(batch)}
        cands = saguaro.Candidates(tree.roots, cands.depth)
        self.cache = _Cache(rows, primary, fanouts, sent, cands, tree)


def _fold(fanout: Sequence[int], drafted: int) -> list[int]:
    """A fan-out over K+1 depths for a speculation of `drafted` < K tokens (an early stop): the
    rounds it can end in are 0..drafted accepted. The stop came at a token the draft doubted, so
    a rejection there is the likeliest outcome: the share of the depths not drafted goes to it,
    but for one candidate kept for the bonus after accepting everything."""
    spare = sum(fanout[drafted:])
    last = min(spare, 1)
    return [*fanout[: drafted - 1], fanout[drafted - 1] + spare - last, last]


@dataclasses.dataclass(frozen=True)
class DraftConfig:
    """Everything needed to build a drafter, in this process or in a draft worker process."""

    path: str
    mode: str  # "sd" or "ssd"
    k: int
    fanout: tuple[int, ...]  # SSD: a fixed list, or empty for `allocation`
    saguaro_c: float
    backup: str
    dtype: str  # a torch float dtype's name, or "int8" (int8 weights, bf16 activations)
    device: str
    jit: str
    max_len: int
    max_batch: int
    page_size: int
    allocation: str = "ranked"  # SSD without a fixed fan-out: `saguaro.ALLOCATIONS`
    budget: int = 0  # SSD without a fixed fan-out: the branches
    accept: float | None = None  # a_p; None: estimated online
    power: float | None = None  # r; None: estimated online
    tensor_parallel: int = 1  # processes the draft is split over (its own mesh)
    prefix_caching: bool = False  # share full prompt pages by content
    stop_below: float | None = None  # end a round's drafting early (`DraftModel.draft`)


def draft_kv_pages(cfg: DraftConfig) -> tuple[int, int]:
    """The draft's KV pages, and the room each sequence needs past its tokens: the glue
    lookahead (K+1) in SD; in SSD also the K tree steps over all branches."""
    extra = cfg.k + 1 + (cfg.k * (sum(cfg.fanout) or cfg.budget) if cfg.mode == "ssd" else 0)
    return (cfg.max_batch + 1) * -(-(cfg.max_len + extra) // cfg.page_size), extra


def make_drafter(cfg: DraftConfig) -> SDDrafter:
    """Load the draft checkpoint and build an SD or SSD drafter with its own KV pages."""
    from ssd.engine.draft_model import draft_steps
    from ssd.engine.tensor_parallel import ShardSpec, TensorParallelModel
    from ssd.kv import alloc_kv_cache
    from ssd.models.quantize import activation_dtype, load_at

    pages, extra = draft_kv_pages(cfg)
    mesh, steps = None, None
    if cfg.tensor_parallel > 1:  # this process is rank 0 of the draft's own mesh
        spec = ShardSpec(cfg.path, cfg.dtype, cfg.device, pages, cfg.page_size, cfg.jit)
        mesh = TensorParallelModel(spec, cfg.tensor_parallel, draft_steps, spawn=True)
        model, steps = mesh.model, mesh.steps
    else:
        model = load_at(cfg.path, cfg.dtype, cfg.device)
    dtype = activation_dtype(cfg.dtype)
    kv = alloc_kv_cache(model.cfg, pages, cfg.page_size, dtype=dtype, device=cfg.device)
    dm = DraftModel(model, kv, cfg.k, cfg.jit, cfg.max_len, extra, steps, mesh, cfg.prefix_caching)
    if cfg.mode == "sd":
        return SDDrafter(dm, cfg.stop_below)
    fanout: Sequence[int] | saguaro.FanoutEstimator | saguaro.RankedFanout = cfg.fanout
    if not cfg.fanout and cfg.allocation == "ranked":
        fanout = saguaro.RankedFanout(cfg.budget)
    elif not cfg.fanout:
        fanout = saguaro.FanoutEstimator(
            cfg.budget,
            cfg.k,
            accept=0.7 if cfg.accept is None else cfg.accept,
            power=1.0 if cfg.power is None else cfg.power,
            learn_accept=cfg.accept is None,
            learn_power=cfg.power is None,
        )
    return SSDDrafter(dm, fanout, cfg.saguaro_c, cfg.backup, cfg.stop_below)
