"""Tree-branch decoding: branches forked at different glue depths, decoded in lock step."""

from __future__ import annotations

import pytest
import torch

from helpers import random_tokens, rel_err
from ssd.kv import pack_tokens, tree_meta
from ssd.models import forward
from ssd.scoring import Scorer


def _decode(model, r, prefixes, depths, steps, scratch, rows, starts=None):
    """Lock-step tree decode of `steps` steps; rows(t) gives each branch's token at step t.
    Returns each branch's logits per step, got[b][i] = [logits at step 0, 1, ...]."""
    for b, ds in enumerate(depths):  # scratch region after the glue, on any free pages
        r.alloc.ensure(r.tables[b], scratch + steps * len(ds))
    q_len, max_pages = max(map(len, depths)), max(map(len, r.tables))
    got: list[list[list[torch.Tensor]]] = [[[] for _ in ds] for ds in depths]
    for t in range(steps):
        meta = tree_meta(
            r.tables,
            [len(p) for p in prefixes],
            depths,
            t,
            [scratch] * len(prefixes),
            r.page_size,
            starts=starts,
            q_len=q_len,
            max_pages=max_pages,
        )
        logits, r.kv = forward(model.params, model.cfg, r.kv, pack_tokens(rows(t), q_len), meta)
        assert torch.isfinite(logits).all()
        for b, ds in enumerate(depths):
            for i in range(len(ds)):
                got[b][i].append(logits[b, i])
    return got


@pytest.mark.parametrize("name", ["llama3_scaled_gqa4_tied", "qwen3_tied"])
def test_tree_branches_equal_each_branch_run_alone(name, models, hf_logits):
    """Two sequences (prefix + K+1 glue tokens each) decode all their branches together; every
    branch's logits equal those of prefix + glue[:depth+1] + branch as an ordinary sequence."""
    model, k, steps, scratch = models[name], 3, 3, 24
    prefixes = [random_tokens(9, seed=20), random_tokens(5, seed=21)]
    glues = [random_tokens(k + 1, seed=22), random_tokens(k + 1, seed=23)]
    depths = [[0, 0, 1, 2, 3, 3], [1, 3, 0]]
    branches = [
        [random_tokens(steps, seed=30 + 10 * b + i) for i in range(len(ds))]
        for b, ds in enumerate(depths)
    ]
    r = Scorer(model, batch=2, page_size=4)
    r.feed([p + g for p, g in zip(prefixes, glues, strict=True)])
    got = _decode(
        model,
        r,
        prefixes,
        depths,
        steps,
        scratch,
        lambda t: [[br[t] for br in bs] for bs in branches],
    )
    for b, ds in enumerate(depths):
        for i, d in enumerate(ds):
            seq = prefixes[b] + glues[b][: d + 1] + branches[b][i]
            ref = hf_logits(name, seq)[-steps:]
            assert rel_err(torch.stack(got[b][i]), ref) <= 5e-6, (b, i, d)


def test_tree_meta_layout():
    """Positions, scratch slots and the visible set follow the documented layout."""
    meta = tree_meta([[3, 0, 2, 1]], [5], [[0, 2]], 1, [10], page_size=4, q_len=3)
    assert meta.positions.tolist() == [[7, 9, 0]]
    # logical scratch slots 12 and 13 -> page index 3 (physical page 1), offsets 0 and 1
    assert meta.slot_mapping.tolist() == [[4, 5, -1]]
    assert meta.context_lens.tolist() == [14]
    assert meta.mask is not None
    visible = [torch.nonzero(row).flatten().tolist() for row in meta.mask[0]]
    assert visible == [[0, 1, 2, 3, 4, 5, 10, 12], [0, 1, 2, 3, 4, 5, 6, 7, 11, 13], []]


def test_late_branches_feed_the_last_glue_token_first(models, hf_logits):
    """Glue holds K of its K+1 tokens (r, s_1..s_{K-1}): in step 0 the branches after the whole
    glue (start 1) feed s_K, the lead writing its KV into its glue slot, and from step 1 on they
    decode after it, beside branches that started at step 0. Every logits row equals the same
    tokens run as an ordinary sequence."""
    name, k, steps, scratch = "qwen2", 3, 3, 24
    model = models[name]
    prefixes = [random_tokens(7, seed=40), random_tokens(4, seed=41)]
    glues = [random_tokens(k + 1, seed=42), random_tokens(k + 1, seed=43)]
    depths = [[0, 2, 3, 3, 3], [3, 1]]
    starts = [[0, 0, 1, 1, 1], [1, 0]]
    branches = [
        [random_tokens(steps, seed=50 + 10 * b + i) for i in range(len(ds))]
        for b, ds in enumerate(depths)
    ]
    r = Scorer(model, batch=2, page_size=4)
    r.feed([p + g[:k] for p, g in zip(prefixes, glues, strict=True)])  # s_K not written

    def rows(t: int) -> list[list[int]]:  # a late branch feeds s_K in step 0
        return [
            [glues[b][k] if t < s else br[t - s] for br, s in zip(bs, starts[b], strict=True)]
            for b, bs in enumerate(branches)
        ]

    got = _decode(model, r, prefixes, depths, steps, scratch, rows, starts)
    for b, ds in enumerate(depths):
        for i, (d, s) in enumerate(zip(ds, starts[b], strict=True)):
            seq = prefixes[b] + glues[b][: d + 1] + branches[b][i][: steps - s]
            ref = hf_logits(name, seq)[-(steps - s) - s :]  # step 0 of a late branch: after s_K
            assert rel_err(torch.stack(got[b][i]), ref) <= 5e-6, (b, i, d, s)


def test_tree_meta_layout_of_late_branches():
    """Step 0: the lead late branch writes the last glue token into its glue slot and sees the
    prefix through it; another late branch writes a scratch copy. Step 1: both see the whole
    glue and their own scratch slots from step 1 on."""
    table, prefix, depths, starts = [[3, 0, 2, 1]], [5], [[1, 3, 3]], [[0, 1, 1]]
    meta0 = tree_meta(table, prefix, depths, 0, [10], page_size=4, starts=starts, q_len=3)
    assert meta0.positions.tolist() == [[7, 8, 8]]
    # logical slots 10 (scratch), 8 (glue) and 12 (scratch): pages 2, 2 and 1 of the table
    assert meta0.slot_mapping.tolist() == [[10, 8, 4]]
    visible = [torch.nonzero(row).flatten().tolist() for row in meta0.mask[0]]
    assert visible == [[0, 1, 2, 3, 4, 5, 6, 10], list(range(9)), [*range(8), 12]]
    meta1 = tree_meta(table, prefix, depths, 1, [10], page_size=4, starts=starts, q_len=3)
    assert meta1.positions.tolist() == [[8, 9, 9]]
    visible = [torch.nonzero(row).flatten().tolist() for row in meta1.mask[0]]
    assert visible == [[*range(7), 10, 13], [*range(9), 14], [*range(9), 15]]
