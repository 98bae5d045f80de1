"""int8 weights for a draft model: per-output-row symmetric quantization, w ≈ q * scale.

Only for drafts: a draft only proposes and verification is exact for any proposal, so a
quantized draft keeps the output law and costs only acceptance. Halving the bytes each draft
forward streams is worth it wherever decoding is bound by memory bandwidth. The input
embedding stays in its float dtype (a lookup reads one row per token, not the whole matrix).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from ssd.models import huge_pages
from ssd.models.loading import Model, load_model

# Layer weights that are matrices (norms and biases stay float).
MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """w [..., N, K] -> (int8 q [..., N, K], fp32 scale [..., N]) with w ≈ q * scale[..., None]."""
    w32 = w.float()
    scale = w32.abs().amax(-1).clamp(min=1e-12) / 127.0
    q = torch.round(w32 / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int8(model: Model) -> Model:
    """The model with int8 projection and head weights (`Params` documents the scale keys),
    on huge pages where they are CPU tensors (`ssd.models.huge_pages`)."""

    def rows(w: Tensor) -> tuple[Tensor, Tensor]:
        q, scale = quantize_rows(w)
        return huge_pages.move(q), scale

    p = model.params
    layers = dict(p.layers)
    for name in MATRICES:
        layers[name], layers[name + "_scale"] = rows(p.layers[name])
    head, head_scale = rows(p.lm_head)
    params = dataclasses.replace(p, layers=layers, lm_head=head, head_scale={"lm_head": head_scale})
    return dataclasses.replace(model, params=params)


def activation_dtype(precision: str | torch.dtype) -> torch.dtype:
    """The activations' and KV cache's dtype of a model kept at `precision`: a torch float
    dtype or its name, or "int8" (int8 weights, bf16 activations)."""
    if precision == "int8":
        return torch.bfloat16
    return precision if isinstance(precision, torch.dtype) else getattr(torch, precision)


def load_at(path: str | Path, precision: str | torch.dtype, device: str = "cpu") -> Model:
    """`load_model` at `precision`; "int8" quantizes the weights once loaded in bf16."""
    model = load_model(path, dtype=activation_dtype(precision), device=device)
    return quantize_int8(model) if precision == "int8" else model
