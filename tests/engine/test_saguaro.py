"""Saguaro's host-side pieces: fan-out allocation and its online estimate, fork, lookup,
the n-gram guess and the backup policy."""

from __future__ import annotations

import random

import torch
from hypothesis import given
from hypothesis import strategies as st

from ssd import saguaro


def test_geometric_fanout_matches_the_worked_example():
    # K = 4, B = 20, a_p = 0.64, r = 1 (docs/design.md §2; upstream study §1.4.2)
    assert saguaro.geometric_fanout(20, 4, 0.64, 1.0) == [5, 4, 4, 3, 4]


@given(st.integers(1, 64), st.integers(1, 8), st.floats(0.0, 0.99), st.floats(0.1, 5.0))
def test_geometric_fanout_spends_the_budget_and_decays(budget, k, a, r):
    f = saguaro.geometric_fanout(budget, k, a, r)
    assert len(f) == k + 1 and sum(f) == budget and min(f) >= 0
    assert all(f[j] >= f[j + 1] - 1 for j in range(k - 1))  # non-increasing up to rounding


def test_online_estimates_recover_acceptance_and_power():
    rng = random.Random(0)
    a, r, k = 0.6, 1.3, 4
    est = saguaro.FanoutEstimator(budget=20, k=k)
    for _ in range(4000):
        n = 0
        while n < k and rng.random() < a:
            n += 1
        est.observe_round(n)
        f = rng.choice([2, 3, 5, 8])
        est.observe_lookup(rng.random() >= f**-r, f)
    got_a, got_r = est.estimates()
    assert abs(got_a - a) < 0.03 and abs(got_r - r) < 0.1
    assert est.fanout() == saguaro.geometric_fanout(20, k, got_a, got_r)
    fixed = saguaro.FanoutEstimator(budget=20, k=k, accept=0.5, learn_accept=False)
    fixed.observe_round(4)
    assert fixed.estimates()[0] == 0.5


def test_fork_and_lookup():
    g = torch.tensor([[[5.0, 4, 3, 2, 1], [1, 2, 3, 4, 5], [0, 9, 8, 7, 6]]])
    drafted = torch.tensor([[0, 4]])  # s_1 = 0 is excluded at depth 0, s_2 = 4 at depth 1
    fan = saguaro.fanout_rows([[2, 1, 2]])
    c = saguaro.fork(g, drafted, fan, budget=5, fmax=2)
    assert c.token.tolist() == [[1, 2, 3, 1, 2]] and c.depth.tolist() == [[0, 0, 1, 2, 2]]
    found = saguaro.lookup(c, torch.tensor([2]), torch.tensor([2]), torch.tensor([True]))
    assert found.hit.tolist() == [True] and found.branch.tolist() == [4]
    miss = saguaro.lookup(c, torch.tensor([1]), torch.tensor([4]), torch.tensor([True]))
    assert miss.hit.tolist() == [False]
    forced = saguaro.lookup(c, torch.tensor([2]), torch.tensor([2]), torch.tensor([False]))
    assert forced.hit.tolist() == [False]


def test_ngram_guess_copies_what_followed_the_latest_match():
    assert saguaro.ngram_guess([1, 2, 3, 9, 1, 2, 3], 4) == [9, 1, 2, 3]
    assert saguaro.ngram_guess([7, 1, 7, 2, 7], 3) == [2, 7, 7]
    assert saguaro.ngram_guess([5, 6], 2) == [6, 6]


def test_backup_policy_prefers_fast_backups_at_large_batch():
    policy = saguaro.BackupPolicy(p_hit=0.6, e_hit=3.0, e_neural=3.0, e_fast=1.0, t_neural=0.8)
    assert policy.choose(1) == "neural"
    assert policy.choose(64) == "fast"


@given(st.lists(st.integers(0, 6), min_size=3, max_size=9), st.data())
def test_fold_keeps_the_budget_over_the_outcomes_an_early_stop_allows(fanout, data):
    from ssd.engine.drafters import _fold

    drafted = data.draw(st.integers(1, len(fanout) - 2))  # fewer than K = len - 1
    folded = _fold(fanout, drafted)
    assert len(folded) == drafted + 1 and sum(folded) == sum(fanout)
    assert folded[: drafted - 1] == fanout[: drafted - 1]
    assert folded[-1] == min(1, sum(fanout[drafted:]))  # one bonus candidate, if any to spare
    assert folded[-2] >= fanout[drafted - 1]
