"""SSD builds its next cache from the glue its speculation carries (the logits and KV of the pass
that drafted it) instead of a glue pass: the same cache as with the glue pass, round after round.

Two drafters over the same draft see the same rounds, one with `carry_glue` off. After the first
round (drafted by the chain) and after a round that hit a cached branch (whose KV the carrying
drafter moves home from the tree's scratch slots), both caches hold the same candidates, and the
same tokens and q rows: a branch after the whole speculation starts one step late in the
carrying drafter, so it holds the first K-1 of the glue drafter's tokens.
"""

from __future__ import annotations

import pytest
import torch

from helpers import random_tokens
from ssd.config import SamplingParams
from ssd.engine.drafters import DraftConfig, SSDDrafter, make_drafter
from ssd.engine.requests import Request

K = 3


def _drafter(path, carry: bool, c: float) -> SSDDrafter:
    cfg = DraftConfig(
        path=str(path), mode="ssd", k=K, fanout=(1, 1, 1, 2), saguaro_c=c, backup="neural",
        dtype="float32", device="cpu", jit="eager", max_len=96, max_batch=2, page_size=8,
    )  # fmt: skip
    d = make_drafter(cfg)
    assert isinstance(d, SSDDrafter)
    d.carry_glue = carry
    return d


def _same_cache(glue: SSDDrafter, carry: SSDDrafter) -> None:
    assert glue.cache is not None and carry.cache is not None
    g, c = glue.cache, carry.cache
    assert torch.equal(g.cands.depth, c.cands.depth)
    assert torch.equal(g.cands.token, c.cands.token)
    late = c.tree.start.bool()
    assert not g.tree.start.bool().any() and late.any()
    for b, m in torch.nonzero(~late).tolist():  # full branches: the same K tokens
        assert torch.equal(g.tree.tokens[b, m], c.tree.tokens[b, m]), (b, m)
    for b, m in torch.nonzero(late).tolist():  # late branches: its first K-1, from step 1
        assert torch.equal(g.tree.tokens[b, m, :-1], c.tree.tokens[b, m, 1:]), (b, m)
    if g.tree.q is not None:
        assert c.tree.q is not None
        full = ~late[..., None, None]
        shifted = torch.cat([c.tree.q[:, :, 1:], c.tree.q[:, :, :1]], 2)
        theirs = torch.where(full, c.tree.q, shifted)[:, :, :-1]
        torch.testing.assert_close(theirs, g.tree.q[:, :, :-1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("temperature", "c"), [(0.0, 1.0), (0.9, 0.6)])
def test_carried_glue_builds_the_cache_a_glue_pass_builds(checkpoints, temperature, c):
    path = checkpoints["qwen2"]
    glue, carry = _drafter(path, False, c), _drafter(path, True, c)
    params = SamplingParams(temperature=temperature, max_tokens=32, ignore_eos=True)
    batch = [
        Request(i, random_tokens(n, seed=60 + i), params, 7 + i, frozenset(), [5 + i])
        for i, n in enumerate((9, 14))
    ]
    for d in (glue, carry):
        d.admit(batch)
    # Round 1 misses: both chains draft the same K tokens, then each builds its cache.
    specs = [d.answer(batch) for d in (glue, carry)]
    assert specs[0].hit == [False, False] and torch.equal(specs[0].tokens, specs[1].tokens)
    for d, s in zip((glue, carry), specs, strict=True):
        d.prepare(batch, s)
    _same_cache(glue, carry)
    # The outcomes: request 0 accepts everything and takes the late branch's candidate (its
    # bonus), request 1 rejects the second token and takes its depth-1 candidate.
    cache = carry.cache
    assert cache is not None
    outcome = []
    for b, accepted in enumerate((K, 1)):
        m = int(torch.nonzero(cache.cands.depth[b] == accepted)[0])
        outcome.append((accepted, int(cache.cands.token[b, m])))
    for r, (a, t) in zip(batch, outcome, strict=True):
        r.out += [*specs[1].tokens[r.id, :a].tolist(), t]
    for d in (glue, carry):
        d.observe(batch, [a for a, _ in outcome], [t for _, t in outcome], 0.0)
    # Round 2 hits both: the carrying drafter's speculation is K-1 long (request 0's branch
    # started late), a prefix of the glue drafter's. Both build on that same speculation, one
    # from the KV it moves home, the other after a glue pass.
    spec = carry.answer(batch)
    full = glue.answer(batch)
    assert spec.hit == full.hit == [True, True]
    assert torch.equal(spec.tokens, full.tokens[:, : K - 1])
    for d in (glue, carry):
        d.prepare(batch, spec)
    _same_cache(glue, carry)
