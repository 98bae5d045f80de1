"""Hypothesis strategies: distributions (peaked, flat, sparse), prefix-dependent table models,
and sampling parameters."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from ssd.config import SamplingParams
from ssd.reference import Prefix, TableModel

# Dirichlet concentrations: small = peaked (near one-hot), large = flat.
SHAPES = {"peaked": 0.1, "mixed": 0.7, "flat": 5.0}


def _dirichlet(rng: np.random.Generator, vocab: int, alpha: float, zero_frac: float) -> np.ndarray:
    p = rng.dirichlet(np.full(vocab, alpha))
    zero = rng.random(vocab) < zero_frac
    zero[int(np.argmax(p))] = False  # keep at least one token
    p[zero] = 0.0
    return p / p.sum()


@st.composite
def distributions(
    draw: st.DrawFn, vocab: int, shape: str | None = None, zeros: bool = True
) -> torch.Tensor:
    """A float64 probability vector over `vocab` tokens (peaked, flat, with some exact zeros)."""
    kind = shape or draw(st.sampled_from(sorted(SHAPES)))
    zero_frac = draw(st.sampled_from([0.0, 0.3])) if zeros else 0.0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return torch.from_numpy(_dirichlet(rng, vocab, SHAPES[kind], zero_frac))


@st.composite
def table_models(draw: st.DrawFn, vocab: int | st.SearchStrategy[int] = 4) -> TableModel:
    """A model whose next-token law depends on the whole prefix (a deterministic hash of it),
    peaked, flat or mixed, possibly with impossible tokens."""
    v = vocab if isinstance(vocab, int) else draw(vocab)
    seed = draw(st.integers(0, 2**32 - 1))
    alpha = SHAPES[draw(st.sampled_from(sorted(SHAPES)))]
    zero_frac = draw(st.sampled_from([0.0, 0.25]))

    def logits(prefix: Prefix) -> np.ndarray:
        rng = np.random.default_rng([seed, len(prefix), *prefix])
        with np.errstate(divide="ignore"):
            return np.log(_dirichlet(rng, v, alpha, zero_frac))

    return TableModel(v, logits)


@st.composite
def sampling_params(draw: st.DrawFn, vocab: int = 6, greedy: bool = True) -> SamplingParams:
    """Temperature (0 = greedy when allowed), top-k, top-p and min-p, each on or off."""
    temps = [0.0, 0.5, 1.0, 1.7] if greedy else [0.5, 1.0, 1.7]
    return SamplingParams(
        temperature=draw(st.sampled_from(temps)),
        top_k=draw(st.sampled_from([0, *range(1, vocab + 1)])),
        top_p=draw(st.sampled_from([1.0, 0.9, 0.6, 0.3])),
        min_p=draw(st.sampled_from([0.0, 0.05, 0.3])),
    )
