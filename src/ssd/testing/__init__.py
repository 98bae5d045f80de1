"""Public testing tools for research code: hypothesis strategies and exactness checkers.

Needs the `test` extra (hypothesis). Typical use, for a new proposal policy `MyProposer`::

    from ssd import reference, testing
    @hypothesis.given(testing.table_models(vocab=4), testing.table_models(vocab=4))
    def test_my_policy_is_exact(target, draft):
        want = reference.exact_law(target, (0,), 3, params)
        got = reference.speculative_law(target, MyProposer(draft), (0,), 3, params, k=2)
        testing.assert_laws_equal(got, want)
"""

from ssd.testing.exactness import (
    GoodnessOfFit,
    assert_follows,
    assert_laws_equal,
    goodness_of_fit,
)
from ssd.testing.strategies import distributions, sampling_params, table_models

__all__ = [
    "GoodnessOfFit",
    "assert_follows",
    "assert_laws_equal",
    "distributions",
    "goodness_of_fit",
    "sampling_params",
    "table_models",
]
