"""Tiny checkpoints and small helpers shared by the model tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

COMMON: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)

# name -> (config class, model class, extra config). Together they cover the llama, qwen2 and
# qwen3 families, GQA ratios 1, 2 and 4, tied and untied heads, biases on all four attention
# projections (Llama) and on q/k/v only (Qwen2), default RoPE at theta 1e4 and 1e6, llama3 RoPE
# scaling and Qwen3 q/k norms. New entries go last: the conftest seeds each by its position.
CHECKPOINTS: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=4)),
    "llama3_scaled_gqa4_tied": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            # A small original context so the scaling changes most frequencies at short lengths.
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "llama_bias_gqa2": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(num_key_value_heads=2, attention_bias=True),
    ),
    "qwen3_tied": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
    ),
    "qwen2": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=False),
    ),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the largest |logit| of the reference `b`."""
    return float((a - b).abs().max() / b.abs().max())


def random_tokens(n: int, seed: int, vocab: int = 256) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_greedy(path: Any, prompt: Sequence[int], n: int) -> list[int]:
    """`transformers` greedy continuation of `prompt` (n tokens, EOS ignored)."""
    model = CHECKPOINTS[path.name][1].from_pretrained(path).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([list(prompt)]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()
