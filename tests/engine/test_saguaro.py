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
    c = saguaro.fork(saguaro.likeliest(g, drafted, 2, torch.ones(1)), fan, budget=5)
    assert c.token.tolist() == [[1, 2, 3, 1, 2]] and c.depth.tolist() == [[0, 0, 1, 2, 2]]
    found = saguaro.lookup(c, torch.tensor([2]), torch.tensor([2]), torch.tensor([True]))
    assert found.hit.tolist() == [True] and found.branch.tolist() == [4]
    miss = saguaro.lookup(c, torch.tensor([1]), torch.tensor([4]), torch.tensor([True]))
    assert miss.hit.tolist() == [False]
    forced = saguaro.lookup(c, torch.tensor([2]), torch.tensor([2]), torch.tensor([False]))
    assert forced.hit.tolist() == [False]


def test_likeliest_gives_the_draft_law_without_the_drafted_token():
    g = torch.tensor([[[2.0, 0, 1], [0, 0, 3]]])
    top = saguaro.likeliest(g, torch.tensor([[0]]), 2, torch.tensor([0.5]))
    p = torch.softmax(g / 0.5, -1)
    assert top.token.tolist() == [[[2, 1], [2, 0]]]
    torch.testing.assert_close(top.prob, torch.stack([p[0, 0, [2, 1]], p[0, 1, [2, 0]]])[None])
    torch.testing.assert_close(top.drafted, p[:, :1, 0])


def test_ranked_fanout_follows_the_rounds_doubt():
    """Worked example at trust 1, where an outcome weighs the draft's probability of its path:
    the same candidates, two rounds that doubt different tokens, two different fan-outs."""
    top = saguaro.Likeliest(
        token=torch.zeros(2, 3, 3, dtype=torch.int64),
        prob=torch.tensor([[[0.04, 0.03, 0.02], [0.5, 0.2, 0.1], [0.6, 0.3, 0.1]]] * 2),
        drafted=torch.tensor([[0.9, 0.2], [0.25, 0.9]]),
    )
    # row 0: depth 0 p, depth 1 .9p, depth 2 .18p -> .45, .18 (1), .108 (2), .09 (1), .054 (2)
    # row 1: depth 0 p, depth 1 .25p, depth 2 .225p
    #   -> .135 (2), .125 (1), .0675 (2), .05 (1), .04 (0)
    got = saguaro.ranked_fanout(top, 5, trust=1.0)
    assert got.tolist() == [[0, 3, 2], [1, 2, 2]]


@given(st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31))
def test_ranked_fanout_spends_the_budget_on_the_best_scores(budget, depth, seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(2, depth + 1, 16, generator=gen) * 3
    drafted = torch.randint(0, 16, (2, depth), generator=gen)
    top = saguaro.likeliest(g, drafted, budget, torch.ones(2))
    fan = saguaro.ranked_fanout(top, budget)
    assert fan.sum(1).tolist() == [budget] * 2 and int(fan.min()) >= 0
    assert int(fan.max()) <= top.prob.shape[2]
    c = saguaro.fork(top, fan, budget)
    assert c.token.shape == (2, budget)
    # every depth's chosen tokens are its likeliest, drafted token excluded
    for b in range(2):
        for j in range(depth + 1):
            mine = c.token[b][c.depth[b] == j].tolist()
            assert mine == top.token[b, j, : len(mine)].tolist()
            assert j == depth or int(drafted[b, j]) not in mine


def test_trust_estimate_recovers_how_the_target_keeps_drafts():
    rng = random.Random(1)
    est = saguaro.TrustEstimator(prior=0.5)
    assert est.trust() == 0.5
    for _ in range(3000):
        d = [rng.uniform(0.05, 1.0) for _ in range(4)]
        kept = 0
        while kept < 4 and rng.random() < d[kept] ** 0.3:
            kept += 1
        est.observe(d, kept)
    assert abs(est.trust() - 0.3) < 0.03
    sure = saguaro.TrustEstimator()
    sure.observe([0.01, 0.02, 0.5], 3)  # a draft the target always agrees with, however unsure
    assert sure.trust() < 0.01


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
