"""Requests and their outputs: host-side bookkeeping for one prompt."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from ssd.config import SamplingParams
from ssd.engine.metrics import AcceptanceStats

_seeds = random.SystemRandom()


@dataclasses.dataclass
class RequestOutput:
    """What `LLM.generate` returns for one prompt, in submission order.

    `finish_reason` is "stop" (EOS or a stop token, which is included in `token_ids`), "length"
    (max_tokens or the model's context), or "error" (the request was refused; `error` says why
    and the other requests of the call are unaffected). `acceptance` holds this request's
    verification rounds in SD/SSD mode (docs/design.md §5; None in AR mode).
    """

    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    new_token_ids: list[int] = dataclasses.field(default_factory=list)  # streaming: this step's
    acceptance: AcceptanceStats | None = None


@dataclasses.dataclass
class Request:
    """A running request: its prompt, parameters, seed, generated tokens and KV pages."""

    id: int
    prompt: list[int]
    params: SamplingParams
    seed: int
    stop_ids: frozenset[int]
    out: list[int] = dataclasses.field(default_factory=list)
    pages: list[int] = dataclasses.field(default_factory=list)
    cached: int = 0  # prompt tokens whose target KV came from the prefix cache
    preemptions: int = 0  # times its pages were taken back and it waited to be recomputed
    finish_reason: str | None = None
    acceptance: AcceptanceStats | None = None  # its verification rounds (SD/SSD)

    @property
    def context(self) -> list[int]:
        """What a prefill feeds: the prompt; for a request resumed after preemption, every
        committed token but the last (which its next step feeds, as if never preempted)."""
        return self.prompt + self.out[:-1]

    @property
    def resumed(self) -> bool:
        """Whether the request already has tokens (it is coming back after preemption)."""
        return bool(self.out)

    @property
    def length(self) -> int:
        """Tokens in the sequence so far (prompt + generated)."""
        return len(self.prompt) + len(self.out)

    def append(self, token: int, max_len: int) -> bool:
        """Record a generated token; returns True when the request is finished."""
        self.out.append(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
        elif len(self.out) >= self.params.max_tokens or self.length >= max_len:
            self.finish_reason = "length"
        return self.finish_reason is not None


def make_request(
    rid: int,
    prompt: Sequence[int],
    params: SamplingParams,
    vocab_size: int,
    max_len: int,
    eos_ids: Sequence[int],
) -> Request:
    """Validate one prompt; raises ValueError with the reason (the caller fails only this one)."""
    if len(prompt) == 0:
        raise ValueError("the prompt is empty")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    if len(prompt) >= max_len:
        raise ValueError(
            f"the prompt has {len(prompt)} tokens; the model's context is {max_len}, "
            "which leaves no room to generate"
        )
    stop = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))
    seed = params.seed if params.seed is not None else _seeds.getrandbits(63)
    return Request(rid, list(prompt), params, seed, frozenset(stop))
