"""Exactness checkers: exact-law comparison, and a chi-square goodness-of-fit test of samples
against a law with a stated false-positive rate."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import torch


def assert_laws_equal(
    got: Mapping[Any, float], want: Mapping[Any, float], atol: float = 1e-12
) -> None:
    """Both laws give every outcome the same probability to within `atol`, and both sum to 1."""
    for name, law in (("got", got), ("want", want)):
        total = sum(law.values())
        if abs(total - 1) > atol * max(1, len(law)):
            raise AssertionError(f"{name} law sums to {total!r}, not 1")
    worst = max(set(got) | set(want), key=lambda s: abs(got.get(s, 0.0) - want.get(s, 0.0)))
    diff = abs(got.get(worst, 0.0) - want.get(worst, 0.0))
    if diff > atol:
        raise AssertionError(
            f"laws differ by {diff:.3e} > {atol:.0e} at outcome {worst!r}: "
            f"got {got.get(worst, 0.0)!r}, want {want.get(worst, 0.0)!r}"
        )


@dataclasses.dataclass(frozen=True)
class GoodnessOfFit:
    statistic: float
    dof: int
    p_value: float
    samples: int


def goodness_of_fit(
    samples: Iterable[Hashable], law: Mapping[Any, float], min_expected: float = 5.0
) -> GoodnessOfFit:
    """Pearson's chi-square test of `samples` against `law`.

    Outcomes whose expected count is below `min_expected` are pooled into one cell, so the
    chi-square approximation holds. An outcome outside the law's support is not a matter of
    statistics: it raises AssertionError at once.
    """
    counts = Counter(samples)
    n = sum(counts.values())
    outside = [s for s in counts if law.get(s, 0.0) <= 0]
    if outside:
        raise AssertionError(
            f"{len(outside)} sampled outcomes have probability 0, e.g. {outside[0]!r}"
        )
    cells: list[tuple[float, int]] = []
    pooled_e, pooled_o = 0.0, 0
    for s, p in law.items():
        if p <= 0:
            continue
        if n * p < min_expected:
            pooled_e, pooled_o = pooled_e + n * p, pooled_o + counts.get(s, 0)
        else:
            cells.append((n * p, counts.get(s, 0)))
    if pooled_e > 0:
        cells.append((pooled_e, pooled_o))
    stat = sum((o - e) ** 2 / e for e, o in cells)
    dof = max(len(cells) - 1, 1)
    p_value = float(
        torch.special.gammaincc(
            torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)
        )
    )
    return GoodnessOfFit(stat, dof, p_value, n)


def assert_follows(
    samples: Iterable[Hashable], law: Mapping[Any, float], alpha: float = 1e-6
) -> GoodnessOfFit:
    """Fail when the samples reject `law` at level `alpha`.

    `alpha` is the false-positive rate: the probability that this assertion fails although the
    samples really come from `law` (asymptotically, for the chi-square test).
    """
    fit = goodness_of_fit(samples, law)
    if fit.p_value < alpha:
        raise AssertionError(
            f"samples do not follow the law: chi2={fit.statistic:.1f}, dof={fit.dof}, "
            f"p={fit.p_value:.2e} < alpha={alpha:.0e} (n={fit.samples})"
        )
    return fit
