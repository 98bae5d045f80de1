"""Acceptance statistics with the project's one definition (DESIGN.md §6).

- acceptance rate = accepted draft tokens / drafted tokens, K drafted per round (tokens after
  the first rejection count as drafted);
- mean accepted length τ = committed tokens per round, including the bonus/recovery token,
  counting only tokens up to EOS or the length limit;
- per-position acceptance P(accepted ≥ i), i = 1..K.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class AcceptanceStats:
    k: int
    hist: list[int] = field(default_factory=list)  # rounds with exactly j accepted, j = 0..K
    committed: int = 0  # tokens the rounds committed (accepted + bonus/recovery, truncated)

    def __post_init__(self) -> None:
        if not self.hist:
            self.hist = [0] * (self.k + 1)

    def add_round(self, accepted: int, committed: int) -> None:
        self.hist[accepted] += 1
        self.committed += committed

    def merge(self, other: AcceptanceStats) -> AcceptanceStats:
        if other.k != self.k:
            raise ValueError(f"cannot merge K={self.k} with K={other.k}")
        return AcceptanceStats(
            self.k,
            [a + b for a, b in zip(self.hist, other.hist, strict=True)],
            self.committed + other.committed,
        )

    @property
    def rounds(self) -> int:
        return sum(self.hist)

    @property
    def drafted(self) -> int:
        return self.rounds * self.k

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


def rounds_from_matches(matches: Sequence[bool], k: int) -> AcceptanceStats:
    """Greedy rounds along a fixed target continuation of N tokens.

    `matches[i]` says whether the draft's greedy token, given the target's own first i tokens,
    equals the target's token i. A round starting at i accepts the leading run of matches
    (at most K); the target then commits one more token of its own (recovery or bonus), unless
    the continuation ended. In greedy decoding draft token j of a round only matters if tokens
    before it matched, so it is always conditioned on the target's prefix: this count equals
    running the rounds for real, up to floating-point near-ties.
    """
    out = AcceptanceStats(k)
    n, pos = len(matches), 0
    while pos < n:
        a = 0
        while a < k and pos + a < n and matches[pos + a]:
            a += 1
        c = min(a + 1, n - pos)
        out.add_round(a, c)
        pos += c
    return out
