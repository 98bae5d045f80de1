"""Pure device-side step functions: `(params, state, inputs, ...) -> (state, outputs)`.

They take the traceable model forward (no donation bookkeeping inside; `ssd.jit` and the engine
donate around them), so each can be compiled whole with `torch.compile(fullgraph=True)` and
replayed as a CUDA graph. Host-side code builds their index inputs (`ssd.kv`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssd import random as rnd
from ssd.kv import AttentionMeta, KVCache
from ssd.models.config import ModelConfig
from ssd.models.llama import Params, forward_unchecked
from ssd.sampling import SamplingTensors, probs_from_logits, sample


def sample_next(
    logits: Tensor, st: SamplingTensors, keys: Tensor, positions: Tensor, greedy_only: bool
) -> Tensor:
    """One token per row from logits [B, V]; row b draws with key fold_in(keys[b], positions[b]),
    its request's stream at the position the token will occupy. `greedy_only` (static) skips
    the transform and noise when every row is greedy; it picks the same token."""
    if greedy_only:
        return logits.argmax(-1)
    return sample(probs_from_logits(logits, st), rnd.fold_in(keys, positions))


def decode_step(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    tokens: Tensor,
    meta: AttentionMeta,
    last: Tensor,
    st: SamplingTensors,
    keys: Tensor,
    greedy_only: bool = False,
) -> tuple[KVCache, Tensor]:
    """Feed tokens [B, Q] (a prompt, a prompt chunk or one new token per sequence), write their
    KV, and sample each sequence's next token from the logits at query index `last` [B].

    Prefill and decode are this same step over different shape buckets (`prefill_step` is an
    alias), so a prompt's first token and later tokens follow one code path.
    """
    logits, kv = forward_unchecked(params, cfg, kv, tokens, meta)
    b = tokens.shape[0]
    at_last = logits[torch.arange(b, device=logits.device), last]
    position = meta.positions[torch.arange(b, device=logits.device), last] + 1
    return kv, sample_next(at_last, st, keys, position, greedy_only)


prefill_step = decode_step
