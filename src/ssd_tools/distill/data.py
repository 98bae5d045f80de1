"""Training batches from teacher records, and the distillation loss.

A record (see `teacher.py`) is one sequence with the target's top-k log-probabilities at every
position. Batches are built under a token budget from length-sorted pools, so padding stays
small without sorting the whole data set (which would make every batch look alike).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

Record = dict[str, Any]


def make_batches(
    lengths: Sequence[int], tokens_per_batch: int, seed: int, pool: int = 64
) -> list[list[int]]:
    """One epoch: shuffle, then within pools of `pool` sequences sort by length and cut
    batches whose padded size (count x longest) fits the budget; shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        group = sorted(order[start : start + pool], key=lambda i: lengths[i])
        cur: list[int] = []
        for i in group:
            if cur and (len(cur) + 1) * lengths[i] > tokens_per_batch:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def plan(lengths: Sequence[int], tokens_per_batch: int, seed: int, steps: int) -> list[list[int]]:
    """Batches for `steps` steps: as many epochs as needed, epoch e shuffled with seed + e.
    A pure function of its arguments, so a resumed run continues the same sequence."""
    out: list[list[int]] = []
    epoch = 0
    while len(out) < steps:
        out += make_batches(lengths, tokens_per_batch, seed * 1000 + epoch)
        epoch += 1
    return out[:steps]


def example_length(rec: Record, max_len: int) -> int:
    """Input positions used for training: all but the last token, at most max_len."""
    return min(int(rec["tokens"].numel()) - 1, max_len)


def collate(
    recs: Sequence[Record], max_len: int, pad: int, prompt_weight: float = 1.0
) -> dict[str, Tensor]:
    """Right-padded inputs [B, L], teacher top-k ids / log-probs [B, L, k], and the loss weight
    of each position, `mask` [B, L]: 0 on padding, `prompt_weight` where the next token is
    still the prompt's, 1 where it is the target's answer (what the draft will be asked)."""
    n = [example_length(r, max_len) for r in recs]
    width, k = max(n), recs[0]["top_idx"].shape[1]
    ids = torch.full((len(recs), width), pad, dtype=torch.int64)
    idx = torch.zeros((len(recs), width, k), dtype=torch.int64)
    lp = torch.full((len(recs), width, k), -1e4, dtype=torch.float32)
    mask = torch.zeros((len(recs), width), dtype=torch.float32)
    for b, (r, m) in enumerate(zip(recs, n, strict=True)):
        ids[b, :m] = r["tokens"][:m].long()
        idx[b, :m] = r["top_idx"][:m].long()
        lp[b, :m] = r["top_lp"][:m]
        mask[b, :m] = 1
        mask[b, : min(m, int(r["prompt_len"]) - 1)] = prompt_weight
    return {"input_ids": ids, "top_idx": idx, "top_lp": lp, "mask": mask}


def kl_top_rest(lq: Tensor, top_lp: Tensor) -> Tensor:
    """KL(p || q) per position over the target's top-k tokens plus one "rest" bucket, from the
    draft's log-probabilities `lq` and the target's `top_lp` at the same ids ([..., k]).

    Lumping the tokens outside the target's top-k into one outcome keeps the loss a true KL
    (between coarsened distributions) without storing the full 49k-way teacher rows, and it
    still penalizes a draft that puts mass outside the target's top-k.
    """
    p = top_lp.exp()
    kl = (p * (top_lp - lq)).sum(-1)
    p_rest = (1 - p.sum(-1)).clamp(min=0)
    q_rest = (1 - lq.exp().sum(-1)).clamp(min=1e-12)
    return kl + p_rest * (p_rest.clamp(min=1e-12).log() - q_rest.log())


def distill_loss(logits: Tensor, top_idx: Tensor, top_lp: Tensor, mask: Tensor) -> Tensor:
    """Mean over unmasked positions of :func:`kl_top_rest`, with the draft's full softmax."""
    lq = torch.log_softmax(logits.float(), dim=-1).gather(-1, top_idx)
    return (kl_top_rest(lq, top_lp) * mask).sum() / mask.sum().clamp(min=1)


def sampled_distill_loss(
    hidden: Tensor,
    head: Tensor,
    top_idx: Tensor,
    top_lp: Tensor,
    weight: Tensor,
    negatives: int,
    generator: torch.Generator,
) -> Tensor:
    """:func:`distill_loss` for positions `hidden` [N, H] (loss weights `weight` [N]) without
    the full LM head.

    The LM head (49k x 576) is two thirds of a training step's cost. Here the draft's logits
    are computed exactly for every token in some position's teacher top-k (the batch's
    "candidates": these carry nearly all the mass of both models once trained), and the
    partition function's remainder is estimated from `negatives` uniform draws outside the
    candidates, scaled by (number outside / draws). Evaluation always uses the full softmax.
    """
    vocab = head.shape[0]
    cand = torch.unique(top_idx)  # sorted
    outside = torch.ones(vocab, dtype=torch.bool, device=head.device)
    outside[cand] = False
    neg = torch.randint(0, vocab, (negatives,), generator=generator)
    neg = neg[outside[neg]]
    z_c = hidden @ head[cand].T
    z_n = hidden @ head[neg].T + math.log(max(int(outside.sum()), 1) / max(len(neg), 1))
    log_z = torch.logsumexp(torch.cat([z_c, z_n], dim=-1), dim=-1, keepdim=True)
    lq = z_c.gather(-1, torch.searchsorted(cand, top_idx)) - log_z
    return (kl_top_rest(lq, top_lp) * weight).sum() / weight.sum().clamp(min=1e-9)


def overlap(logits: Tensor, top_idx: Tensor, top_lp: Tensor) -> Tensor:
    """Σ over the target's top-k of min(p, q): a lower bound on the probability that one
    temperature-1 draft token is accepted (the exact value is Σ over all tokens)."""
    q = torch.softmax(logits.float(), dim=-1).gather(-1, top_idx)
    return torch.minimum(q, top_lp.exp()).sum(-1)
