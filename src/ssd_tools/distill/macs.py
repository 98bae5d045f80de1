"""Multiply-adds per generated token of a Llama-style decoder, from its configuration.

We count the matrix products that every token pays whatever the context: the seven projections
of each layer and the LM head. Attention scores and the weighted sum add 2 * heads * head_dim
MACs per layer per token of context; they are reported separately (`context` argument) because
they depend on the sequence length, and they only favour a shallow draft further. Norms, RoPE,
SiLU and softmax are O(hidden) per token and left out. The embedding lookup is a gather, not a
product, so a draft that reuses the target's tied embedding still pays the full LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Macs:
    layers: int  # all decoder layers, projections only
    lm_head: int
    attention: int  # score + value products at the given context length

    @property
    def total(self) -> int:
        return self.layers + self.lm_head + self.attention


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    return cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)


def macs_per_token(cfg: Any, context: int = 0) -> Macs:
    """MACs per token for an HF config (object or dict) or an `ssd` `ModelConfig`."""
    hidden = _get(cfg, "hidden_size")
    heads = _get(cfg, "num_attention_heads")
    kv_heads = _get(cfg, "num_key_value_heads") or heads
    head_dim = _get(cfg, "head_dim") or hidden // heads
    ffn = _get(cfg, "intermediate_size")
    n_layers = _get(cfg, "num_hidden_layers")
    vocab = _get(cfg, "vocab_size")
    per_layer = (
        hidden * heads * head_dim  # q
        + 2 * hidden * kv_heads * head_dim  # k, v
        + heads * head_dim * hidden  # o
        + 3 * hidden * ffn  # gate, up, down
    )
    attention = n_layers * 2 * heads * head_dim * context
    return Macs(layers=n_layers * per_layer, lm_head=hidden * vocab, attention=attention)


def macs_ratio(draft_cfg: Any, target_cfg: Any, context: int = 0) -> float:
    return macs_per_token(draft_cfg, context).total / macs_per_token(target_cfg, context).total


def describe(draft_cfg: Any, target_cfg: Any) -> str:
    """One line per model plus the ratio, at context 0 and 512, for reports."""
    lines = []
    for name, cfg in (("target", target_cfg), ("draft", draft_cfg)):
        m = macs_per_token(cfg)
        lines.append(
            f"{name:6s} MACs/token: {m.total / 1e6:7.2f} M "
            f"(layers {m.layers / 1e6:.2f} M + LM head {m.lm_head / 1e6:.2f} M)"
        )
    lines.append(
        f"draft/target MACs ratio: {macs_ratio(draft_cfg, target_cfg):.3f} "
        f"(with attention over 512 tokens of context: "
        f"{macs_ratio(draft_cfg, target_cfg, 512):.3f})"
    )
    return "\n".join(lines)
