"""Saguaro's pieces: fan-out allocation, the fork of candidate outcomes, cache lookup, and the
fast (n-gram) backup guess.

An outcome of a verification round is (k, t*): k drafts accepted, then the recovery or bonus
token t*. The draft pre-speculates, for each sequence, the outcomes (j, c) with c among the
top-F_j tokens of its own distribution g_j at depth j (excluding the drafted s_{j+1} for j < K:
a rejected token is never the recovery token). docs/design.md §2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ssd.pytree import pytree_dataclass


def geometric_fanout(budget: int, k: int, accept: float, power: float) -> list[int]:
    """F_0..F_K summing to `budget`: F_j ∝ a^(j/(1+r)) for j < K, times (1-a)^(-1/(1+r)) at K.

    This maximizes the hit probability when misses follow 1 - p_hit(F) = F^-r and accepted
    lengths are capped-geometric with acceptance a. Rounded by largest remainder.
    """
    if budget < 1 or k < 1:
        raise ValueError(f"fan-out budget and K must be >= 1, got budget={budget}, K={k}")
    if not 0 <= accept < 1 or power <= 0:
        raise ValueError(f"need acceptance in [0, 1) and power r > 0, got {accept}, {power}")
    e = 1 / (1 + power)
    w = [accept ** (j * e) for j in range(k)] + [accept ** (k * e) * (1 - accept) ** -e]
    raw = [budget * x / sum(w) for x in w]
    f = [int(x) for x in raw]
    for j in sorted(range(k + 1), key=lambda j: f[j] - raw[j])[: budget - sum(f)]:
        f[j] += 1
    return f


ALLOCATIONS = ("ranked", "geometric")  # a fan-out chosen per round, or Saguaro's per depth
TRUST_PRIOR = 0.5  # a request's trust in its draft before its first outcome
# The trusts the estimate picks from, log-spaced 3.6% apart: one tensor op per round scores them
# all, where a bisection took forty (1 ms a round on the draft's core).
TRUST_GRID = torch.logspace(-3, math.log10(8.0), 256, dtype=torch.float64)


@dataclasses.dataclass(frozen=True)
class RankedFanout:
    """The fan-out chosen each round from the draft's own probabilities (`ranked_fanout`), with
    each request's trust in its draft learned from its rounds (`TrustEstimator`)."""

    budget: int
    prior: float = TRUST_PRIOR


@dataclasses.dataclass
class TrustEstimator:
    """How far a request's draft is trusted: the target keeps a drafted token of draft
    probability d with probability about d^trust. `trust` is the MLE from the request's own
    rounds (the draft's probabilities of the tokens it sent, and how many the target kept), or
    `prior` before the first outcome.

    The log-likelihood t S + sum_j log(1 - d_j^t) (S: sum of log d over kept tokens, d_j: each
    refused token's) is concave in t, so its score falls through 0 once, at the estimate (on
    `TRUST_GRID`). A draft the target
    always agrees with drives trust toward 0 (every branch on the bonus after accepting all); on
    logged rounds of the Qwen2.5-Coder pair the estimate (0.73 at T = 0, 0.26 at T = 1) gave
    the hit rates of the best fixed trust (docs/performance.md, finding 41).
    """

    prior: float = TRUST_PRIOR
    kept: float = 0.0  # S
    refused: list[float] = dataclasses.field(default_factory=list)  # log d_j
    rounds: int = 0

    def observe(self, drafted: Sequence[float], accepted: int) -> None:
        logs = [math.log(max(d, 1e-12)) for d in drafted]
        self.kept += sum(logs[:accepted])
        if accepted < len(logs):
            self.refused.append(logs[accepted])
        self.rounds += 1

    def trust(self) -> float:
        if not self.rounds:
            return self.prior
        logd = torch.tensor(self.refused, dtype=torch.float64)
        x = (TRUST_GRID[:, None] * logd).exp()
        score = self.kept - (x * logd / (1 - x).clamp(min=1e-12)).sum(1)  # decreasing in t
        return float(TRUST_GRID[min(int((score > 0).sum()), len(TRUST_GRID) - 1)])


BACKUPS = ("neural", "fast", "auto")  # draft just in time, n-gram guess, chosen per round


def backup_fanout(budget: int, k: int) -> list[int]:
    """After a fast-backup round the speculation is nearly always rejected at once: put the
    whole budget on depth 0."""
    return [budget] + [0] * k


def check_fanout(fanout: Sequence[int], k: int, vocab_size: int) -> None:
    """A fixed fan-out: K+1 branch counts, each at most the vocabulary (there are no more
    distinct outcomes at a position), not all 0."""
    f = list(fanout)
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in f)
    if len(f) != k + 1 or not ints or not all(0 <= x <= vocab_size for x in f) or sum(f) < 1:
        raise ValueError(
            f"fan-out needs K+1 = {k + 1} integers in [0, {vocab_size}] (the vocabulary), "
            f"not all 0; got {f}"
        )


def fanout_rows(lists: Sequence[Sequence[int]]) -> Tensor:
    """Per-sequence fan-out lists (equal sums) as an int64 [B, K+1] tensor."""
    sums = {sum(f) for f in lists}
    if len(sums) != 1:
        raise ValueError(f"fan-out lists in one round must have equal sums, got {sorted(sums)}")
    return torch.tensor([list(f) for f in lists], dtype=torch.int64)


@pytree_dataclass
class Candidates:
    """The M = sum(F) pre-speculated outcomes per sequence: token [B, M] and depth [B, M]."""

    token: Tensor
    depth: Tensor


@pytree_dataclass
class Likeliest:
    """The draft's likeliest outcome tokens of a round: at each depth j of the sent speculation,
    its top tokens (the drafted s_{j+1} excluded for j < L), descending, with their draft
    probabilities; and the draft probability of each drafted token."""

    token: Tensor  # [B, L+1, F]
    prob: Tensor  # [B, L+1, F]
    drafted: Tensor  # [B, L]


def likeliest(g: Tensor, drafted: Tensor, fmax: int, temperature: Tensor) -> Likeliest:
    """Top-`fmax` outcome tokens of draft logits g [B, L+1, V] along the sent speculation
    `drafted` [B, L], probabilities at each row's temperature [B] (use 1 for greedy rows)."""
    vocab = g.shape[-1]
    fmax = min(fmax, vocab)  # a larger fan-out names every token (and fills with repeats)
    z = g.float() / temperature[:, None, None]
    norm = z.logsumexp(-1, keepdim=True)
    excluded = torch.nn.functional.pad(drafted, (0, 1), value=-1)  # nothing excluded at depth L
    own = z.gather(-1, excluded.clamp(min=0)[..., None])
    kept = z.scatter(-1, excluded.clamp(min=0)[..., None], float("-inf"))
    kept = torch.where((excluded >= 0)[..., None], kept, z)
    top = kept.topk(fmax, dim=-1)
    return Likeliest(top.indices, (top.values - norm).exp(), (own - norm).exp()[:, :-1, 0])


def ranked_fanout(top: Likeliest, budget: int, trust: Tensor | float = TRUST_PRIOR) -> Tensor:
    """Per row, the fan-out [B, L+1] of the `budget` outcomes the draft finds likeliest this round.

    Outcome (j, c) (j drafts accepted, then c) is given probability about
    A_j (1 - a_j) p_j(c) / (1 - d_j) for j < L and A_L p_L(c), where d_j is the draft's probability
    of the drafted s_{j+1}, a_j = d_j^trust stands for the target accepting it, A_j is the product
    of a_i over i < j, and p_j(c) / (1 - d_j) is the draft's law of c once s_{j+1} is ruled out.
    Unlike `geometric_fanout`, the budget follows this round's doubts: a round whose draft hesitates
    at its second token spends its branches there. `trust`: a float, or one per row [B]
    (`TrustEstimator`).
    """
    if isinstance(trust, Tensor):
        trust = trust[:, None]
    accept = top.drafted.clamp(0, 1) ** trust  # [B, L]
    ones = torch.ones_like(accept[:, :1])
    reach = torch.cat([ones, accept.cumprod(1)], 1)  # A_j, [B, L+1]
    doubt = (1 - accept) / (1 - top.drafted).clamp(min=1e-12)
    score = (reach * torch.cat([doubt, ones], 1))[..., None] * top.prob  # [B, L+1, F]
    n = min(budget, score[0].numel())  # a tiny vocabulary may hold fewer outcomes
    best = score.flatten(1).topk(n, dim=1).indices // top.prob.shape[2]
    return torch.zeros_like(reach, dtype=torch.int64).scatter_add_(1, best, torch.ones_like(best))


def fork(top: Likeliest, fanout: Tensor, budget: int) -> Candidates:
    """The top-F_j outcome tokens at each depth j (`likeliest`, drafted token excluded), for a
    per-sequence fan-out [B, L+1] with row sums `budget` (or every outcome top holds, when fewer)
    and entries at most top's F.

    Candidates are ordered by depth, then by descending logit; where top holds fewer than
    `budget` outcomes they repeat (a repeat is never looked up: `lookup` takes the first match).
    """
    b, k1, fmax = top.token.shape
    rank = torch.arange(fmax, device=fanout.device)
    chosen = (rank < fanout[..., None]).flatten(1)  # [B, (L+1)*fmax], depth-major
    depth = torch.arange(k1, device=fanout.device).repeat_interleave(fmax).expand(b, -1)
    order = torch.sort(chosen.to(torch.int8), dim=1, descending=True, stable=True).indices
    order = order[:, :budget].repeat(1, -(-budget // order.shape[1]))[:, :budget]
    return Candidates(token=top.token.flatten(1).gather(1, order), depth=depth.gather(1, order))


@pytree_dataclass
class Lookup:
    """Per sequence: whether its outcome was pre-speculated, and the branch index if so."""

    hit: Tensor
    branch: Tensor


def lookup(cands: Candidates, accepted: Tensor, token: Tensor, valid: Tensor) -> Lookup:
    """Find outcome (accepted [B], token [B]) among the candidates; `valid` [B] False forces a
    miss (a sequence's first round, or after preemption)."""
    match = (cands.depth == accepted[:, None]) & (cands.token == token[:, None])
    return Lookup(hit=match.any(1) & valid, branch=match.to(torch.int8).argmax(1))


def ngram_guess(tokens: Sequence[int], k: int, max_n: int = 3) -> list[int]:
    """Prompt-lookup guess of the next k tokens: find the latest earlier occurrence of the
    longest suffix (up to `max_n` tokens) and copy what followed it; else repeat the last token.
    A deterministic proposal, verified as a point mass."""
    seq = list(tokens)
    for n in range(min(max_n, len(seq) - 1), 0, -1):
        suffix = seq[-n:]
        for start in range(len(seq) - n - 1, -1, -1):
            if seq[start : start + n] == suffix:
                follow = seq[start + n : start + n + k]
                return follow + [seq[-1]] * (k - len(follow))
    return [seq[-1]] * k


@dataclasses.dataclass
class BackupPolicy:
    """Picks the backup for a round from the batch speed model (docs/design.md §2; the paper's
    Cor. 16):

    tokens/time = [p E_hit + (1 - p) E_miss] / [p^b max(1, T_p) + (1 - p^b)(1 + T_b)]

    with times relative to one verification; p (per-sequence hit rate), the accepted lengths
    after hits and after each backup, and the times T_p (cache build), T_b (neural backup) are
    running averages of the run's own measurements. A fast backup costs T_b ≈ 0.
    """

    p_hit: float = 0.5
    e_hit: float = 2.0
    e_neural: float = 2.0
    e_fast: float = 1.0
    t_build: float = 1.0
    t_neural: float = 1.0
    decay: float = 0.9

    def speed(self, b: int, e_miss: float, t_backup: float) -> float:
        all_hit = self.p_hit**b
        tokens = self.p_hit * self.e_hit + (1 - self.p_hit) * e_miss
        return tokens / (all_hit * max(1.0, self.t_build) + (1 - all_hit) * (1 + t_backup))

    def choose(self, b: int) -> str:
        neural = self.speed(b, self.e_neural, self.t_neural)
        return "neural" if neural >= self.speed(b, self.e_fast, 0.0) else "fast"

    def update(self, name: str, value: float) -> None:
        setattr(self, name, self.decay * getattr(self, name) + (1 - self.decay) * value)


@dataclasses.dataclass
class FanoutEstimator:
    """The geometric fan-out with a_p and r given, or estimated online from the run itself.

    a_p: the per-token acceptance of primary (cache-hit) speculations, the MLE of a geometric
    law from accepted counts (a rejection ends a round early; a full round has none). r: the
    MLE of miss probability F^-r from the cache's own lookups, with F the fan-out at the
    realized depth (lookups with F >= 2).
    """

    budget: int
    k: int
    accept: float = 0.7
    power: float = 1.0
    learn_accept: bool = True
    learn_power: bool = True
    accepted: int = 0
    rejections: int = 0
    by_fanout: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # F: [hit, miss]

    def observe_round(self, accepted: int) -> None:
        self.accepted += accepted
        self.rejections += accepted < self.k

    def observe_lookup(self, hit: bool, fanout_at_depth: int) -> None:
        if fanout_at_depth >= 2:
            self.by_fanout.setdefault(fanout_at_depth, [0, 0])[0 if hit else 1] += 1

    def estimates(self) -> tuple[float, float]:
        a, r = self.accept, self.power
        if self.learn_accept and self.accepted + self.rejections >= 16:
            a = min(0.95, max(0.05, self.accepted / (self.accepted + self.rejections)))
        hits = sum(h for h, _ in self.by_fanout.values())
        misses = sum(m for _, m in self.by_fanout.values())
        if self.learn_power and hits + misses >= 16 and hits and misses:
            r = self._power_mle()
        return a, r

    def _power_mle(self, lo: float = 0.05, hi: float = 8.0) -> float:
        """Root of the score of sum_F [h_F log(1 - F^-r) - m_F r log F] (decreasing in r)."""

        def score(r: float) -> float:
            total = 0.0
            for f, (h, m) in self.by_fanout.items():
                lf, x = math.log(f), f**-r
                total += h * lf * x / (1 - x) - m * lf
            return total

        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if score(mid) > 0 else (lo, mid)
        return (lo + hi) / 2

    def fanout(self) -> list[int]:
        return geometric_fanout(self.budget, self.k, *self.estimates())
