"""Statistical tests of the batched verifier itself (docs/design.md §4, level 2).

Each test draws >= 100,000 rows with fixed keys. p and q do not depend on the prefix here, so
the closed forms are simple: a_i = sum(min(p_i, q_i)), P(n >= i) = a_0 ... a_{i-1}, the token
emitted after n = k accepted drafts follows norm(max(0, p_k - q_k)) (p_K when k = K), an
accepted draft at position i follows norm(min(p_i, q_i)), and every emitted token at position i
follows p_i. Each assertion has false-positive rate ALPHA (chi-square, asymptotic); there are
about 60 in this file, so a correct implementation fails one with probability < 1e-4.
"""

import zlib

import pytest
import torch

from ssd import random as rnd
from ssd import testing
from ssd.sampling import residual, saguaro_q, sample, verify_chain

ALPHA = 1e-6
ROWS = 120_000
V, K = 6, 3


def dist(g, shape, alpha, zeros=0.0):
    x = torch.distributions.Dirichlet(torch.full((V,), alpha, dtype=torch.float64)).sample(shape)
    if zeros:
        mask = torch.rand(x.shape, generator=g, dtype=torch.float64) < zeros
        mask.scatter_(-1, x.argmax(-1, keepdim=True), False)
        x = x.masked_fill(mask, 0)
    return x / x.sum(-1, keepdim=True)


def case(name):
    torch.manual_seed(zlib.crc32(name.encode()))
    g = torch.Generator().manual_seed(7)
    if name == "flat":
        return dist(g, (K + 1,), 3.0), dist(g, (K,), 3.0)
    if name == "peaked":
        return dist(g, (K + 1,), 0.3), dist(g, (K,), 0.3)
    if name == "filtered p (zeros, as after top-k/top-p)":
        return dist(g, (K + 1,), 1.0, zeros=0.5), dist(g, (K,), 1.0)
    if name == "saguaro q'":
        p, q = dist(g, (K + 1,), 1.0), dist(g, (K,), 0.5)
        return p, saguaro_q(q[None], 2, 0.3)[0]
    raise ValueError(name)


def run(p, q, point_mass=None, seed=0):
    keys = rnd.split(rnd.key(seed), ROWS)
    draft_keys = rnd.split(rnd.fold_in(keys, 1), K)
    pb, qb = p.expand(ROWS, K + 1, V), q.expand(ROWS, K, V)
    tokens = sample(qb, draft_keys)
    if point_mass is not None:  # point-mass rows propose a fixed guess instead
        guess = torch.arange(K) % V
        tokens = torch.where(point_mass[:, None], guess, tokens)
    out = verify_chain(pb, qb, tokens, rnd.fold_in(keys, 2), point_mass)
    return tokens, out.num_accepted, out.next_token


def law(vec):
    return {int(i): float(vec[i]) for i in range(V) if vec[i] > 0}


def check_all(p, q, tokens, n, nxt, rows=None):
    rows = torch.ones(ROWS, dtype=torch.bool) if rows is None else rows
    tokens, n, nxt = tokens[rows], n[rows], nxt[rows]
    a = torch.minimum(p[:K], q).sum(-1)
    reach = torch.cat([torch.ones(1, dtype=torch.float64), a.cumprod(0)])
    count_law = {k: float(reach[k] * (1 - a[k] if k < K else 1)) for k in range(K + 1)}
    testing.assert_follows(n.tolist(), {k: v for k, v in count_law.items() if v > 0}, ALPHA)
    q_ext = torch.cat([q, torch.zeros(1, V, dtype=torch.float64)])
    for k in range(K + 1):
        sel = n == k
        if sel.sum() > 200:
            testing.assert_follows(nxt[sel].tolist(), law(residual(p[k], q_ext[k])), ALPHA)
    emitted = torch.where(n > 0, tokens[:, 0], nxt)  # first emitted token
    testing.assert_follows(emitted.tolist(), law(p[0]), ALPHA)
    for i in range(1, K + 1):  # i-th emitted token, among rows that reach it
        reached = n >= i
        tok = torch.where(n > i, tokens[:, min(i, K - 1)], nxt)[reached]
        if reached.sum() > 200:
            testing.assert_follows(tok.tolist(), law(p[i]), ALPHA)
    for i in range(K):
        acc = n > i
        if acc.sum() > 200:
            m = torch.minimum(p[i], q[i])
            testing.assert_follows(tokens[acc, i].tolist(), law(m / m.sum()), ALPHA)
    assert int(nxt.min()) >= 0 and int(nxt.max()) < V


@pytest.mark.parametrize(
    "name", ["flat", "peaked", "filtered p (zeros, as after top-k/top-p)", "saguaro q'"]
)
def test_batched_verify_matches_closed_forms(name):
    p, q = case(name)
    tokens, n, nxt = run(p, q)
    check_all(p, q, tokens, n, nxt)
    never = (p == 0).nonzero()
    for i, t in never.tolist():  # probability-0 tokens are never emitted at that position
        emitted_i = torch.where(n > i, tokens[:, min(i, K - 1)], nxt)[n >= i]
        assert not (emitted_i == t).any()


def test_point_mass_rows_mixed_with_distribution_rows():
    p, q = case("flat")
    point_mass = torch.arange(ROWS) % 3 == 0
    tokens, n, nxt = run(p, q, point_mass)
    check_all(p, q, tokens, n, nxt, rows=~point_mass)
    one_hot = torch.nn.functional.one_hot(torch.arange(K) % V, V).to(torch.float64)
    check_all(p, one_hot, tokens, n, nxt, rows=point_mass)


def test_the_checker_rejects_a_biased_verifier():
    """The old 'accept iff equal to argmax p' rule at temperature > 0 must be caught."""
    p, q = case("flat")
    tokens, _n, nxt = run(p, q)
    greedy_n = (tokens == p[:K].argmax(-1)).to(torch.int64).cumprod(-1).sum(-1)
    with pytest.raises(AssertionError, match="do not follow"):
        check_all(p, q, tokens, greedy_n, nxt)
