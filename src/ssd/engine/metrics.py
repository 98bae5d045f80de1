"""Metrics of speculative decoding, one definition used everywhere (DESIGN.md §6)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SpecMetrics:
    """Counters for one `generate` call (or one request); `summary()` derives the rates.

    Emitted tokens are counted only up to EOS / stop / max_tokens, so a round's committed
    tokens may be fewer than accepted + 1.
    """

    k: int
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    committed: int = 0
    accepted_at_least: list[int] = dataclasses.field(default_factory=list)
    hit_rounds: int = 0
    hit_committed: int = 0
    miss_rounds: int = 0
    miss_committed: int = 0
    bonus_rounds: int = 0
    bonus_predicted: int = 0
    decode_seconds: float = 0.0
    target_wait_seconds: float = 0.0
    draft_busy_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.accepted_at_least = self.accepted_at_least or [0] * self.k

    def record(self, accepted: int, committed: int, hit: bool | None) -> None:
        """One sequence's verification round: `accepted` drafts, `committed` tokens kept."""
        self.rounds += 1
        self.drafted += self.k
        self.accepted += accepted
        self.committed += committed
        for i in range(accepted):
            self.accepted_at_least[i] += 1
        if hit is True:
            self.hit_rounds += 1
            self.hit_committed += committed
        elif hit is False:
            self.miss_rounds += 1
            self.miss_committed += committed

    def summary(self) -> dict[str, float | list[float] | None]:
        def ratio(a: float, b: float) -> float | None:
            return a / b if b else None

        cache_rounds = self.hit_rounds + self.miss_rounds
        return {
            "k": self.k,
            "rounds": self.rounds,
            "acceptance_rate": ratio(self.accepted, self.drafted),
            "mean_accepted_length": ratio(self.committed, self.rounds),
            "per_position_acceptance": [a / self.rounds for a in self.accepted_at_least]
            if self.rounds
            else None,
            "cache_hit_rate": ratio(self.hit_rounds, cache_rounds),
            "mean_accepted_length_hit": ratio(self.hit_committed, self.hit_rounds),
            "mean_accepted_length_miss": ratio(self.miss_committed, self.miss_rounds),
            "bonus_prediction_accuracy": ratio(self.bonus_predicted, self.bonus_rounds),
            "decode_tok_per_s": ratio(self.committed, self.decode_seconds),
            "target_wait_per_round_s": ratio(self.target_wait_seconds, self.rounds),
            "draft_idle_fraction": None
            if not self.decode_seconds
            else max(0.0, 1 - self.draft_busy_seconds / self.decode_seconds),
        }
