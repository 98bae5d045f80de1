"""User-facing configuration: sampling parameters (vLLM's names and meanings) and limits."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

# Draft tokens per round: past a few dozen, the chance that a round accepts them all (a^K) is
# nil, while each round's draft passes and KV room grow with K.
MAX_K = 32

# SD's early stop on CPU (`LLM(draft_stop=)`), as `ssd generate` and `ssd bench` set it: a draft
# pass costs about a quarter of a verification there, and verifying a token the draft doubts
# mostly buys a rejection (docs/performance.md, finding 20).
CPU_DRAFT_STOP = 0.7


def draft_stop_problem(stop: float | None) -> str | None:
    """What is wrong with an early-stop value, if anything (checked before anything loads)."""
    if stop is not None and not 0 <= stop <= 1:
        return f"draft stop must be a probability in [0, 1], got {stop!r}"
    return None


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to turn a model's logits into tokens for one request.

    The transform is applied in this order: temperature, top-k, top-p, min-p (see
    :func:`ssd.sampling.probs_from_logits`). `temperature=0` is greedy decoding; `top_k=0`,
    `top_p=1` and `min_p=0` disable their filters. `seed` fixes the request's random stream
    (position by position), so its tokens do not depend on what else shares its batch.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        _require(
            isinstance(self.temperature, int | float)
            and math.isfinite(self.temperature)
            and self.temperature >= 0,
            f"temperature must be a finite number >= 0 (0 means greedy), got {self.temperature!r}",
        )
        _require(
            is_int(self.top_k) and self.top_k >= 0,
            f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}",
        )
        _require(
            isinstance(self.top_p, int | float) and 0 < self.top_p <= 1,
            f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}",
        )
        _require(
            isinstance(self.min_p, int | float) and 0 <= self.min_p <= 1,
            f"min_p must be in [0, 1] (0 disables it), got {self.min_p!r}",
        )
        _require(
            is_int(self.max_tokens) and self.max_tokens >= 1,
            f"max_tokens must be an integer >= 1, got {self.max_tokens!r}",
        )
        _require(
            self.seed is None or (is_int(self.seed) and 0 <= self.seed < 2**63),
            f"seed must be None or an integer in [0, 2**63), got {self.seed!r}",
        )
        _require(
            all(is_int(t) and t >= 0 for t in self.stop_token_ids),
            f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}",
        )
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
