"""Acceptance counted along the target's own greedy answer, for any K at once.

At temperature 0 both q and p are one-hot, so draft token j of a round only matters if the
tokens before it matched: every draft token is conditioned on the target's own prefix. One
teacher-forced draft pass over the target's greedy continuation (`greedy_matches`) therefore
gives the rounds of greedy speculative decoding for every K (`rounds_from_matches`), up to
floating-point near-ties. `ssd eval-pair` checks this against the engine's SD on a few prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ssd.engine.metrics import AcceptanceStats
from ssd.models import Model
from ssd.scoring import score


@torch.no_grad()
def greedy_matches(draft: Model, prompt: Sequence[int], continuation: Sequence[int]) -> list[bool]:
    """matches[i]: the draft's argmax after prompt + continuation[:i] is continuation[i]."""
    seq = list(prompt) + list(continuation)
    pred = score(draft, seq[:-1])[len(prompt) - 1 :].argmax(-1).tolist()
    return [p == t for p, t in zip(pred, continuation, strict=True)]


def rounds_from_matches(matches: Sequence[bool], k: int, first: int = 1) -> AcceptanceStats:
    """Greedy rounds along a fixed target continuation of N tokens.

    `matches[i]` says whether the draft's greedy token, given the target's own first i tokens,
    equals the target's token i. Tokens before `first` are not drafted: as in the engine, the
    target's prefill emits token 0 and rounds start at token 1. A round starting at i accepts
    the leading run of matches
    (at most K); the target then commits one more token of its own (recovery or bonus), unless
    the continuation ended. In greedy decoding draft token j of a round only matters if tokens
    before it matched, so it is always conditioned on the target's prefix: this count equals
    running the rounds for real, up to floating-point near-ties.
    """
    out = AcceptanceStats(k)
    n, pos = len(matches), first
    while pos < n:
        a = 0
        while a < k and pos + a < n and matches[pos + a]:
            a += 1
        c = min(a + 1, n - pos)
        out.add_round(a, c)
        pos += c
    return out
