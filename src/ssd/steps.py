"""Pure device-side step functions: `(params, state, inputs, ...) -> (state, outputs)`.

They call the traceable model forward (no donation bookkeeping inside; `ssd.jit` and the engine
donate around them), so each can be compiled whole with `torch.compile(fullgraph=True)` and
replayed as a CUDA graph. Host-side code builds their index inputs (`ssd.kv`).

Shapes are in the signatures (jaxtyping: B batch rows, Q query tokens, K draft length, K1 = K+1,
M branches, V vocabulary); the tests check them at run time on eager calls.

Random streams (per request key `k`): AR samples the token at position t with fold_in(k, t);
drafts sample the token at position t with fold_in(fold_in(k, DRAFT), t), whichever path
(draft chain, tree branch, backup) drafts it; verification of a round whose last committed
token sits at position t uses fold_in(fold_in(k, VERIFY), t). Draft and target noise are thus
independent, and a cached branch carries exactly the tokens a draft chain would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ssd import random as rnd
from ssd.kv import AttentionMeta, KVCache
from ssd.models.config import ModelConfig
from ssd.models.decoder import Params, forward_unchecked
from ssd.sampling import (
    SamplingTensors,
    Verification,
    draw,
    greedy_chain,
    probs_from_logits,
    saguaro_q,
    sample,
    verify_chain,
)

DRAFT, VERIFY = 1, 2


def sample_next(
    logits: Float[Tensor, "B V"],
    st: SamplingTensors,
    keys: Int[Tensor, "B 2"],
    positions: Int[Tensor, " B"],
) -> Int[Tensor, " B"]:
    """One token per row from logits [B, V]; row b draws with key fold_in(keys[b], positions[b]),
    its request's stream at the position the token will occupy. An all-greedy batch skips the
    transform and the noise; it picks the same token."""
    if st.greedy:
        return logits.argmax(-1)
    return sample(probs_from_logits(logits, st), rnd.fold_in(keys, positions))


def _rows(x: Tensor, idx: Tensor) -> Tensor:
    """x[b, idx[b]] for x [B, Q, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), idx]


def decode_step(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    tokens: Int[Tensor, "B Q"],
    meta: AttentionMeta,
    last: Int[Tensor, " B"],
    st: SamplingTensors,
    keys: Int[Tensor, "B 2"],
) -> tuple[KVCache, Int[Tensor, " B"]]:
    """Feed tokens [B, Q] (a prompt, a prompt chunk or one new token per sequence), write their
    KV, and sample each sequence's next token from the logits at query index `last` [B].

    Prefill and decode are this same step over different shape buckets (`prefill_step` is an
    alias), so a prompt's first token and later tokens follow one code path.
    """
    logits, kv = forward_unchecked(params, cfg, kv, tokens, meta, last[:, None])
    position = _rows(meta.positions, last) + 1
    return kv, sample_next(logits[:, 0], st, keys, position)


prefill_step = decode_step


def fill_step(
    params: Params, cfg: ModelConfig, kv: KVCache, tokens: Int[Tensor, "B Q"], meta: AttentionMeta
) -> KVCache:
    """Write the KV of tokens [B, Q] and compute no logits (the draft's prompt prefill)."""
    none = torch.zeros(tokens.shape[0], 0, dtype=torch.int64, device=tokens.device)
    return forward_unchecked(params, cfg, kv, tokens, meta, none)[1]


def proposal_probs(
    logits: Float[Tensor, "B V"],
    st: SamplingTensors,
    fanout: Int[Tensor, " B"] | None,
    c: Float[Tensor, " B"] | None,
) -> Float[Tensor, "B V"]:
    """The draft's proposal q from its logits [B, ..., V]: the sampling transform, then Saguaro's
    rescale of the top-`fanout` tokens by `c` ([B] tensors) when given."""
    q = probs_from_logits(logits, st)
    return q if fanout is None or c is None else saguaro_q(q, fanout, c)


def draft_step(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    tokens0: Int[Tensor, "B T"],
    metas: Sequence[AttentionMeta],
    st: SamplingTensors,
    keys: Int[Tensor, "B 2"],
    fanout: Int[Tensor, "B K"] | None = None,
    c: Float[Tensor, " B"] | None = None,
) -> tuple[
    KVCache,
    Int[Tensor, "B K"],
    Float[Tensor, "B K V"] | None,
    Float[Tensor, "B K"],
    Float[Tensor, "B K V"],
]:
    """Draft K = len(metas) tokens per sequence with their proposal rows q.

    The first forward feeds `tokens0`: [B, 2] = the token before the last committed one and the
    last committed one r (re-writing the former's KV makes the draft cache whole again whatever
    the previous round accepted), or [B, 1] = the token just drafted when a round is drafted one
    call per token; each later forward feeds the token just drafted. `fanout` [B, K] and `c` [B]
    turn on Saguaro sampling. Returns (kv, tokens [B, K], q [B, K, V], conf [B, K], logits
    [B, K, V]); q is None for an all-greedy batch, whose drafts are point masses on the draft's
    argmax; conf is the probability the draft gave each drafted token (greedy: its softmax at the
    argmax), which an early stop of the drafting reads; logits are the rows each token was drawn
    from, which the speculation cache ranks outcomes by (the glue the chain already computed).
    """
    out, qs, confs, rows = [], [], [], []
    inp = tokens0
    draft_keys = None if st.greedy else rnd.fold_in(keys, DRAFT)  # greedy rounds draw nothing
    last = torch.full_like(tokens0[:, :1], tokens0.shape[1] - 1)
    for d, meta in enumerate(metas):
        logits, kv = forward_unchecked(params, cfg, kv, inp, meta, last if d == 0 else None)
        if st.greedy:
            tok = logits[:, -1].argmax(-1)
            conf = _rows(logits[:, -1].float().softmax(-1), tok)
        else:
            q = proposal_probs(logits[:, -1], st, None if fanout is None else fanout[:, d], c)
            assert draft_keys is not None
            tok = draw(q, rnd.fold_in(draft_keys, meta.positions[:, -1] + 1), False)
            conf = _rows(q, tok)
            qs.append(q)
        out.append(tok)
        confs.append(conf)
        rows.append(logits[:, -1])
        inp = tok[:, None]
    q_rows = torch.stack(qs, 1) if qs else None
    return kv, torch.stack(out, 1), q_rows, torch.stack(confs, 1), torch.stack(rows, 1)


def verify_step(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    tokens: Int[Tensor, "B K1"],
    meta: AttentionMeta,
    q: Float[Tensor, "B K V"] | None,
    point_mass: Bool[Tensor, " B"] | None,
    st: SamplingTensors,
    keys: Int[Tensor, "B 2"],
) -> tuple[KVCache, Verification]:
    """Target forward over [r, s_1..s_K] (tokens [B, K+1]) and exact chain verification against
    the proposal rows q [B, K, V] (point-mass rows where `point_mass` [B] is set)."""
    logits, kv = forward_unchecked(params, cfg, kv, tokens, meta)
    if st.greedy:
        return kv, greedy_chain(logits, tokens[:, 1:])
    p = probs_from_logits(logits, st)
    verify_keys = rnd.fold_in(rnd.fold_in(keys, VERIFY), meta.positions[:, 0])
    return kv, verify_chain(p, q, tokens[:, 1:], verify_keys, point_mass)


def glue_step(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    path: Int[Tensor, "B K1"],
    meta: AttentionMeta,
) -> tuple[KVCache, Float[Tensor, "B K1 V"]]:
    """Draft forward over the sent path [r, s_1..s_K]: writes its draft KV and returns the draft
    logits g [B, K+1, V] (g_j: after consuming r, s_1..s_j) that the fork ranks."""
    logits, kv = forward_unchecked(params, cfg, kv, path, meta)
    return kv, logits


def tree_step(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    roots: Int[Tensor, "B M"],
    metas: Sequence[AttentionMeta],
    st: SamplingTensors,
    keys: Int[Tensor, "B 2"],
    fanout: Int[Tensor, "B M S"] | None = None,
    c: Float[Tensor, " B"] | None = None,
    rank: Int[Tensor, "B M"] | None = None,
) -> tuple[
    KVCache,
    Int[Tensor, "B M S"],
    Float[Tensor, "B M S V"] | None,
    Float[Tensor, "B M S V"],
    Int[Tensor, "B M"],
]:
    """Decode S = len(metas) steps over all branches at once: roots [B, M] are the candidate
    recovery/bonus tokens; each branch is an independent chain (mask and positions in `metas`).
    `fanout` [B, M, S] is the Saguaro fan-out each branch's token of each step is drawn under.

    `rank` [B, M] (-1 elsewhere), given to the call that runs step 0, marks the branches that
    start a step late (`ssd.kv.tree_meta` starts): in step 0 they feed the last glue token, and
    the one at rank j then takes the j-th likeliest token of the lead's logits (the glue's last
    row) as its candidate. Returns (kv, tokens [B, M, S], q [B, M, S, V], logits [B, M, S, V],
    the tokens the next step feeds [B, M]): the next speculation for each outcome, the rows its
    tokens were drawn from (q None for an all-greedy batch: point masses on the draft's argmax)
    and the draft's logits along it."""
    b, m = roots.shape
    st_m = st.repeat_rows(m)
    # greedy rounds draw nothing: no keys to derive
    branch_keys = None if st.greedy else rnd.fold_in(keys, DRAFT).repeat_interleave(m, 0)
    c_m = None if c is None else c.repeat_interleave(m)
    out, qs, rows = [], [], []
    inp = roots
    for d, meta in enumerate(metas):
        logits, kv = forward_unchecked(params, cfg, kv, inp, meta)
        if st.greedy:
            tok = logits.argmax(-1)
        else:
            f = None if fanout is None else fanout[:, :, d].flatten()
            q = proposal_probs(logits.flatten(0, 1), st_m, f, c_m)
            assert branch_keys is not None
            tok = draw(q, rnd.fold_in(branch_keys, meta.positions.flatten() + 1), False)
            qs.append(q.view(b, m, -1))
        out.append(tok.view(b, m))
        rows.append(logits)
        inp = out[-1]
        if rank is not None and d == 0:
            inp = late_candidates(logits, inp, rank)
    q_rows = torch.stack(qs, 2) if qs else None
    return kv, torch.stack(out, 2), q_rows, torch.stack(rows, 2), inp


def late_candidates(
    logits: Float[Tensor, "B M V"], tokens: Int[Tensor, "B M"], rank: Int[Tensor, "B M"]
) -> Int[Tensor, "B M"]:
    """`tokens`, but where rank >= 0 the rank-th likeliest token of the row's lead branch (its
    rank 0) by `logits`: the candidates after the last glue token, once its logits are known."""
    lead = (rank == 0).to(torch.int8).argmax(1)
    row = logits[torch.arange(logits.shape[0], device=logits.device), lead]
    top = row.topk(min(logits.shape[1], logits.shape[2]), -1).indices
    return torch.where(rank >= 0, top.gather(1, rank.clamp(0, top.shape[1] - 1)), tokens)


def move_step(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    src: Int[Tensor, " N"],
    dst: Int[Tensor, " N"],
) -> KVCache:
    """Copy every layer's K/V from flat slots `src` to `dst` (-1 on both sides: nothing), all
    read before any is written: a cached branch's KV, written by the tree in scratch slots,
    becomes its sequence's own once the branch is sent."""
    sink = kv.sink_page * kv.page_size
    src, dst = (torch.where(x >= 0, x, sink) for x in (src, dst))
    for pages in (kv.k_pages, kv.v_pages):
        flat = pages.flatten(1, 2)
        flat.index_copy_(1, dst, flat.index_select(1, src))
    return KVCache(kv.k_pages, kv.v_pages)  # the successor state (the input is consumed)
