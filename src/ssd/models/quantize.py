"""Cheaper drafts: int8 weights (per-output-row symmetric, w ≈ q * scale) and a head cut to
part of the vocabulary.

Only for drafts: a draft only proposes and verification is exact for any proposal, so either
keeps the output law and costs only acceptance. Fewer bytes per draft forward are worth it
wherever decoding is bound by memory bandwidth. The input embedding stays in its float dtype
(a lookup reads one row per token, not the whole matrix).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor

from ssd.models.config import ModelConfig
from ssd.models.loading import Model

# Layer weights that are matrices (norms and biases stay float).
MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """w [..., N, K] -> (int8 q [..., N, K], fp32 scale [..., N]) with w ≈ q * scale[..., None]."""
    w32 = w.float()
    scale = w32.abs().amax(-1).clamp(min=1e-12) / 127.0
    q = torch.round(w32 / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int8(model: Model) -> Model:
    """The model with int8 projection and head weights (`Params` documents the scale keys)."""
    p = model.params
    layers = dict(p.layers)
    for name in MATRICES:
        layers[name], layers[name + "_scale"] = quantize_rows(p.layers[name])
    head, head_scale = quantize_rows(p.lm_head)
    params = dataclasses.replace(p, layers=layers, lm_head=head, head_scale={"lm_head": head_scale})
    return dataclasses.replace(model, params=params)


def restrict_vocab(model: Model, ids: Tensor) -> Model:
    """The model with its head cut to the rows of token `ids` (sorted, unique): its logits are
    -inf elsewhere, so it never proposes those tokens. At vocabulary 151,936 the head is about
    a quarter of a 0.5B draft's bytes; byte-level BPE ids rise with rarity, so the first few
    ten thousand ids (and the special tokens) hold nearly every token a target emits."""
    p = model.params
    ids = ids.to(p.lm_head.device)
    if p.head_ids is not None or not bool((ids[1:] > ids[:-1]).all()):
        raise ValueError("restrict_vocab takes a full head and sorted, unique ids")
    scale = {key: s[ids] for key, s in p.head_scale.items()}
    params = dataclasses.replace(
        p, lm_head=p.lm_head[ids].contiguous(), head_scale=scale, head_ids=ids
    )
    return dataclasses.replace(model, params=params)


def leading_ids(path: str | Path, cfg: ModelConfig, n: int) -> Tensor:
    """The ids a draft cut to `n` tokens keeps: ids below n, the end-of-sequence ids and the
    tokenizer's added (special) tokens, which byte-level BPE numbers last."""
    keep = set(range(min(n, cfg.vocab_size))) | set(cfg.eos_token_ids)
    tok = Path(path) / "tokenizer.json"
    if tok.exists():
        keep |= {int(t["id"]) for t in json.loads(tok.read_text()).get("added_tokens", [])}
    return torch.tensor(sorted(i for i in keep if i < cfg.vocab_size))
