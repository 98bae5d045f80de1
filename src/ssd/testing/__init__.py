"""Public testing tools for research code: hypothesis strategies and exactness checkers.

The strategies need the `test` extra (hypothesis); the exactness checkers do not, and
`ssd demo` uses them without it. Typical use, for a new proposal policy `MyProposer`::

    from ssd import reference, testing
    @hypothesis.given(testing.table_models(vocab=4), testing.table_models(vocab=4))
    def test_my_policy_is_exact(target, draft):
        want = reference.exact_law(target, (0,), 3, params)
        got = reference.speculative_law(target, MyProposer(draft), (0,), 3, params, k=2)
        testing.assert_laws_equal(got, want)
"""

from typing import TYPE_CHECKING, Any

from ssd.testing.exactness import (
    GoodnessOfFit,
    assert_follows,
    assert_laws_equal,
    goodness_of_fit,
)

if TYPE_CHECKING:
    from ssd.testing.strategies import distributions, sampling_params, table_models

_STRATEGIES = ("distributions", "sampling_params", "table_models")


def __getattr__(name: str) -> Any:
    # Imported on first use, so that the checkers work without hypothesis installed.
    if name in _STRATEGIES:
        from ssd.testing import strategies

        return getattr(strategies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GoodnessOfFit",
    "assert_follows",
    "assert_laws_equal",
    "distributions",
    "goodness_of_fit",
    "sampling_params",
    "table_models",
]
