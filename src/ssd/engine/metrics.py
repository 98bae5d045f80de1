"""Metrics of speculative decoding, one definition used everywhere (docs/design.md §5).

- acceptance rate = accepted draft tokens / drafted tokens, K drafted per round unless SD's
  early stop (`draft_stop`) ended a round sooner or SSD sent a branch that started late (K-1);
  tokens after the first rejection count as drafted, tokens after EOS / stop / the length
  limit neither as drafted nor as accepted;
- mean accepted length τ = committed tokens per round, including the bonus/recovery token,
  counting only tokens up to EOS / stop / the length limit;
- per-position acceptance P(accepted ≥ i), i = 1..K.

`AcceptanceStats` holds exactly what these need; `SpecMetrics` adds the engine's cache and
timing counters on top of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass
class AcceptanceStats:
    """Verification rounds at one K: how many accepted j drafts (j = 0..K) and what they
    committed. The acceptance rate, τ and P(accepted ≥ i) are derived from these alone."""

    k: int
    # hist[j]: rounds with exactly j accepted, j = 0..K
    hist: list[int] = dataclasses.field(default_factory=list)
    committed: int = 0  # tokens the rounds committed (accepted + bonus/recovery, truncated)
    drafted: int = 0  # tokens the rounds drafted (K each, fewer after an early stop)

    def __post_init__(self) -> None:
        if not self.hist:
            self.hist = [0] * (self.k + 1)

    def add_round(self, accepted: int, committed: int, drafted: int | None = None) -> None:
        """One round: `accepted` of its `drafted` tokens (default K), `committed` kept."""
        drafted = self.k if drafted is None else drafted
        if not 0 <= accepted <= drafted <= self.k:
            raise ValueError(f"a round accepts 0..drafted <= K={self.k}, got {accepted}/{drafted}")
        self.hist[accepted] += 1
        self.committed += committed
        self.drafted += drafted

    def merge(self, other: AcceptanceStats) -> AcceptanceStats:
        if other.k != self.k:
            raise ValueError(f"cannot merge K={self.k} with K={other.k}")
        return AcceptanceStats(
            self.k,
            [a + b for a, b in zip(self.hist, other.hist, strict=True)],
            self.committed + other.committed,
            self.drafted + other.drafted,
        )

    @property
    def rounds(self) -> int:
        return sum(self.hist)

    @property
    def accepted(self) -> int:
        return sum(j * n for j, n in enumerate(self.hist))

    @property
    def rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tau(self) -> float:
        return self.committed / self.rounds if self.rounds else float("nan")

    def per_position(self) -> list[float]:
        """P(accepted ≥ i) for i = 1..K."""
        n = self.rounds
        return [sum(self.hist[i:]) / n if n else float("nan") for i in range(1, self.k + 1)]

    def to_dict(self) -> dict[str, object]:
        return {
            "k": self.k,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "committed": self.committed,
            "rate": self.rate,
            "tau": self.tau,
            "per_position": self.per_position(),
            "hist": list(self.hist),
        }


def merge_all(stats: Iterable[AcceptanceStats], k: int) -> AcceptanceStats:
    out = AcceptanceStats(k)
    for s in stats:
        out = out.merge(s)
    return out


@dataclasses.dataclass
class SpecMetrics:
    """Counters for one `generate` call (or one request); `summary()` derives the rates.

    Emitted tokens are counted only up to EOS / stop / max_tokens, so a round's committed
    tokens may be fewer than accepted + 1.
    """

    k: int
    acceptance: AcceptanceStats = dataclasses.field(init=False)
    hit_rounds: int = 0
    hit_committed: int = 0
    miss_rounds: int = 0
    miss_committed: int = 0
    bonus_rounds: int = 0
    bonus_predicted: int = 0
    decode_seconds: float = 0.0
    target_wait_seconds: float = 0.0
    draft_busy_seconds: float = 0.0
    draft_failures: int = 0  # drafters replaced by the fallback after a `DraftFailure`

    def __post_init__(self) -> None:
        self.acceptance = AcceptanceStats(self.k)

    def record(self, accepted: int, committed: int, hit: bool | None, drafted: int) -> None:
        """One sequence's verification round: `accepted` of `drafted` drafts, `committed`
        tokens kept."""
        self.acceptance.add_round(accepted, committed, drafted)
        if hit is True:
            self.hit_rounds += 1
            self.hit_committed += committed
        elif hit is False:
            self.miss_rounds += 1
            self.miss_committed += committed

    def summary(self) -> dict[str, float | list[float] | None]:
        def ratio(a: float, b: float) -> float | None:
            return a / b if b else None

        acc, cache_rounds = self.acceptance, self.hit_rounds + self.miss_rounds
        return {
            "k": self.k,
            "rounds": acc.rounds,
            "acceptance_rate": ratio(acc.accepted, acc.drafted),
            "mean_accepted_length": ratio(acc.committed, acc.rounds),
            "drafted_per_round": ratio(acc.drafted, acc.rounds),
            "per_position_acceptance": acc.per_position() if acc.rounds else None,
            "cache_hit_rate": ratio(self.hit_rounds, cache_rounds),
            "mean_accepted_length_hit": ratio(self.hit_committed, self.hit_rounds),
            "mean_accepted_length_miss": ratio(self.miss_committed, self.miss_rounds),
            "bonus_prediction_accuracy": ratio(self.bonus_predicted, self.bonus_rounds),
            "decode_tok_per_s": ratio(acc.committed, self.decode_seconds),
            "target_wait_per_round_s": ratio(self.target_wait_seconds, acc.rounds),
            "draft_failures": self.draft_failures,
            "draft_idle_fraction": None
            if not self.decode_seconds
            else max(0.0, 1 - self.draft_busy_seconds / self.decode_seconds),
        }
