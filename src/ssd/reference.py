"""The reference exact sampler: tiny-vocabulary models, their exact laws, and the exact law of
speculative decoding computed by enumeration (float64, no sampling noise).

A :class:`TableModel` is any function from a prefix (a tuple of token ids) to next-token logits
over a small vocabulary. :func:`exact_law` enumerates the law of every continuation of length n
under a target's :func:`ssd.sampling.probs_from_logits`; :func:`speculative_law` enumerates the
law of the tokens emitted by chained verification rounds for a given way of proposing drafts
(a :class:`Proposer`). Research code checks a new proposal policy by comparing the two.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from ssd import random as rnd
from ssd.config import SamplingParams
from ssd.sampling import SamplingTensors, chain_law, probs_from_logits, saguaro_q, sample

Prefix = tuple[int, ...]
Law = dict[Prefix, float]
ArrayLike = Any  # a sequence of floats, numpy array or tensor of length V


class TableModel:
    """Next-token logits (float64, -inf for impossible tokens) as a function of the prefix."""

    def __init__(self, vocab_size: int, logits_fn: Callable[[Prefix], ArrayLike]):
        self.vocab_size = vocab_size
        self._fn = logits_fn
        self._logits: dict[Prefix, Tensor] = {}
        self._probs: dict[tuple[Prefix, SamplingParams], Tensor] = {}

    @staticmethod
    def from_probs(vocab_size: int, probs_fn: Callable[[Prefix], ArrayLike]) -> TableModel:
        return TableModel(
            vocab_size, lambda s: torch.as_tensor(probs_fn(s), dtype=torch.float64).log()
        )

    def logits(self, prefix: Prefix) -> Tensor:
        if prefix not in self._logits:
            z = torch.as_tensor(self._fn(prefix), dtype=torch.float64)
            if z.shape != (self.vocab_size,):
                want = (self.vocab_size,)
                raise ValueError(
                    f"logits for {prefix} have shape {tuple(z.shape)}, expected {want}"
                )
            self._logits[prefix] = z
        return self._logits[prefix]

    def probs_many(self, prefixes: Sequence[Prefix], params: SamplingParams) -> Tensor:
        """Distributions [N, V] after the sampling transform, computed in one batch and cached."""
        todo = list(dict.fromkeys(s for s in prefixes if (s, params) not in self._probs))
        if todo:
            z = torch.stack([self.logits(s) for s in todo])
            probs = probs_from_logits(z, SamplingTensors.from_params(params, batch=len(todo)))
            self._probs.update({(s, params): row for s, row in zip(todo, probs, strict=True)})
        return torch.stack([self._probs[(s, params)] for s in prefixes])

    def probs(self, prefix: Prefix, params: SamplingParams) -> Tensor:
        return self.probs_many([prefix], params)[0]


def exact_law(model: TableModel, prefix: Prefix, n: int, params: SamplingParams) -> Law:
    """P(next n tokens = c) for every continuation c of positive probability."""
    law: Law = {(): 1.0}
    for _ in range(n):
        seqs = list(law)
        probs = model.probs_many([prefix + s for s in seqs], params)
        law = {
            (*s, t): law[s] * float(row[t])
            for s, row in zip(seqs, probs, strict=True)
            for t in row.nonzero()[:, 0].tolist()
        }
    return law


def sample_ar(
    model: TableModel, prefix: Prefix, n: int, params: SamplingParams, key: Tensor
) -> Prefix:
    """Plain autoregressive sampling; token i uses the stream key fold_in(key, position)."""
    out = prefix
    for _ in range(n):
        probs = model.probs(out, params)
        out = (*out, int(sample(probs[None], rnd.fold_in(key, len(out))[None])[0]))
    return out[len(prefix) :]


# --- speculative decoding, enumerated ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Proposal:
    """One possible draft of K tokens, its probability, and the q it was drawn from ([K, V];
    None for a deterministic proposal, verified as a point mass)."""

    tokens: Prefix
    prob: float
    q: Tensor | None


class Proposer(Protocol):
    def proposals(self, prefix: Prefix, k: int) -> list[Proposal]:
        """Every draft this proposer can make after `prefix`, with its probability."""
        ...


@dataclasses.dataclass
class DraftProposer:
    """Drafts sampled from a draft model, optionally through Saguaro's q' (fanout F, constant C)."""

    model: TableModel
    params: SamplingParams
    saguaro: tuple[int, float] | None = None

    def q(self, prefix: Prefix) -> Tensor:
        q = self.model.probs(prefix, self.params)
        return q if self.saguaro is None else saguaro_q(q[None], *self.saguaro)[0]

    def proposals(self, prefix: Prefix, k: int) -> list[Proposal]:
        out = [Proposal((), 1.0, torch.zeros(0, self.model.vocab_size, dtype=torch.float64))]
        for _ in range(k):
            grown = []
            for d in out:
                q = self.q(prefix + d.tokens)
                assert d.q is not None
                rows = torch.cat([d.q, q[None]])
                grown += [
                    Proposal((*d.tokens, t), d.prob * float(q[t]), rows)
                    for t in q.nonzero()[:, 0].tolist()
                ]
            out = grown
        return out


@dataclasses.dataclass
class PointProposer:
    """A deterministic guess (n-gram, cached guess, anything): `guess(prefix, k)` -> K tokens."""

    guess: Callable[[Prefix, int], Sequence[int]]

    def proposals(self, prefix: Prefix, k: int) -> list[Proposal]:
        return [Proposal(tuple(self.guess(prefix, k)), 1.0, None)]


@dataclasses.dataclass
class MixedProposer:
    """Picks a proposer per round from the prefix (e.g. cache hit -> draft, miss -> n-gram)."""

    choose: Callable[[Prefix], Proposer]

    def proposals(self, prefix: Prefix, k: int) -> list[Proposal]:
        return self.choose(prefix).proposals(prefix, k)


def round_law(
    target: TableModel, proposer: Proposer, prefix: Prefix, params: SamplingParams, k: int
) -> Law:
    """Exact law of the tokens one verification round emits (k accepted drafts + 1 token)."""
    props = proposer.proposals(prefix, k)
    vocab = target.vocab_size
    p = target.probs_many([prefix + d.tokens[:i] for d in props for i in range(k + 1)], params)
    p = p.reshape(len(props), k + 1, vocab)
    tokens = torch.tensor([d.tokens for d in props], dtype=torch.int64).reshape(len(props), k)
    point = torch.tensor([d.q is None for d in props])
    q = torch.stack(
        [torch.zeros(k, vocab, dtype=torch.float64) if d.q is None else d.q for d in props]
    )
    stop, nxt = chain_law(p, q, tokens, point)
    law: Law = defaultdict(float)
    for i, j in itertools.product(range(len(props)), range(k + 1)):
        weight = props[i].prob * float(stop[i, j])
        if weight > 0:
            for t in nxt[i, j].nonzero()[:, 0].tolist():
                law[(*props[i].tokens[:j], t)] += weight * float(nxt[i, j, t])
    return dict(law)


def speculative_law(
    target: TableModel, proposer: Proposer, prefix: Prefix, n: int, params: SamplingParams, k: int
) -> Law:
    """Exact law of the first n tokens emitted by verification rounds chained from `prefix`."""
    law: Law = defaultdict(float)
    for seq, prob in round_law(target, proposer, prefix, params, k).items():
        if len(seq) >= n:
            law[seq[:n]] += prob
        else:
            for rest, p2 in speculative_law(
                target, proposer, prefix + seq, n - len(seq), params, k
            ).items():
                law[seq + rest] += prob * p2
    return dict(law)
