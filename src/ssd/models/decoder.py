"""Functional Llama 3 / Qwen2 / Qwen3 decoder: ``forward(params, cfg, kv, tokens, meta)``.

One implementation for all three families; they differ only in static flags of
:class:`ModelConfig`: which attention projections carry a bias (Qwen2: q, k and v but not o;
Llama and Qwen3: all four or none) and whether q and k get a per-head RMSNorm before RoPE
(Qwen3). Numerics follow `transformers` (RMSNorm in float32, RoPE as
``x * cos + rotate_half(x) * sin`` with float32 angles) so that fp32 logits agree to rounding.

A tensor-parallel shard (``cfg.shard``, `ssd.models.sharding`) runs the same code on its part
of the weights, with one all-reduce after the embedding, the attention block and the MLP, and
an all-gather of the logits: functional collectives, so the step stays one traceable function.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssd import kernels
from ssd.attention import attention_mask, paged_attention
from ssd.kernels import linear
from ssd.kv import AttentionMeta, KVCache, write_kv
from ssd.models import collectives
from ssd.models.config import ModelConfig
from ssd.pytree import check_live, donate, pytree_dataclass

FORWARD = "ssd.models.decoder.forward"


# Per-layer weights live in a dict of tensors stacked over layers ([L, ...]), keyed as below.
# Linear weights keep the HF [out, in] layout (F.linear consumes it as is). Keys a config does
# not use (biases, Qwen3 q/k norms) are absent rather than None: None is a *leaf* in torch's
# pytree, so a None field would break every `tree_map(lambda t: t.to(...), params)`.
LayerParams = dict[str, Tensor]


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Per-layer shape of each weight this config has (stacked: ``[L, *shape]``)."""
    hid, inter = cfg.hidden_size, cfg.intermediate_size
    shapes = {
        "attn_norm": (hid,),
        "wq": (cfg.q_size, hid),
        "wk": (cfg.kv_size, hid),
        "wv": (cfg.kv_size, hid),
        "wo": (hid, cfg.q_size),
        "mlp_norm": (hid,),
        "w_gate": (inter, hid),
        "w_up": (inter, hid),
        "w_down": (hid, inter),
    }
    if cfg.qkv_bias:
        shapes.update(bq=(cfg.q_size,), bk=(cfg.kv_size,), bv=(cfg.kv_size,))
    if cfg.o_bias:
        shapes.update(bo=(hid,))
    if cfg.qk_norm:
        shapes.update(q_norm=(cfg.head_dim,), k_norm=(cfg.head_dim,))
    return shapes


@pytree_dataclass
class Params:
    """All weights. With tied embeddings `lm_head` *is* the `embed` tensor (one storage when
    loaded; a `tree_map` that copies leaves would copy it twice, so load directly on device)."""

    embed: Tensor  # [V, hidden]
    layers: LayerParams  # see layer_shapes
    final_norm: Tensor  # [hidden]
    lm_head: Tensor  # [V, hidden]
    inv_freq: Tensor  # [head_dim / 2] float32 RoPE inverse frequencies, derived from cfg at load
    # int8 weights (`ssd.models.quantize`) carry fp32 per-row scales: a layer weight `name` in
    # `layers[name + "_scale"]`, the head in `head_scale["lm_head"]`; empty for float weights.
    head_scale: dict[str, Tensor] = dataclasses.field(default_factory=dict)


def rope_inv_freq(cfg: ModelConfig) -> Tensor:
    """float32 inverse frequencies on CPU, with Llama 3.1 scaling when configured."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between blended.
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / rs.factor, inv)
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor
    )
    blended = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, blended, scaled)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x ``[B, Q, H, D]``; cos/sin ``[B, Q, 1, D]`` (rotate-half convention, as in HF)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_tables(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _attention_block(
    lp: LayerParams,
    cfg: ModelConfig,
    kv: KVCache,
    layer: int,
    x: Tensor,
    rope: tuple[Tensor, Tensor],
    meta: AttentionMeta,
    mask: Tensor,
) -> Tensor:
    b, q_len, _ = x.shape
    q = _proj(lp, "wq", x, "bq").view(b, q_len, cfg.num_attention_heads, cfg.head_dim)
    k = _proj(lp, "wk", x, "bk").view(b, q_len, cfg.num_key_value_heads, cfg.head_dim)
    v = _proj(lp, "wv", x, "bv").view(b, q_len, cfg.num_key_value_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    # Write first, then read: this step's tokens see themselves and each other via the mask.
    write_kv(kv, layer, k, v, meta.slot_mapping)
    out = paged_attention(
        q, kv.k_pages[layer], kv.v_pages[layer], meta.block_tables, mask, cfg.head_dim**-0.5
    )
    if cfg.shard is None:
        return _proj(lp, "wo", out.reshape(b, q_len, cfg.q_size), "bo")
    o = _all_reduce(_proj(lp, "wo", out.reshape(b, q_len, cfg.q_size)), cfg)
    return o + lp["bo"] if "bo" in lp else o  # the replicated bias, once


def _all_reduce(x: Tensor, cfg: ModelConfig) -> Tensor:
    """Sum the ranks' partial results (identity without a shard)."""
    return x if cfg.shard is None else collectives.all_reduce(x, cfg.shard)


def _embed(tokens: Tensor, params: Params, cfg: ModelConfig) -> Tensor:
    """Embedding rows; a shard looks up only its own vocabulary rows and zeros the rest, and the
    all-reduce fills them in exactly (each row is one rank's value plus zeros)."""
    if cfg.shard is None:
        return F.embedding(tokens, params.embed)
    rows = params.embed.shape[0]
    local = tokens - cfg.shard.vocab_start
    mine = (local >= 0) & (local < rows)
    x = F.embedding(local.clamp(0, rows - 1), params.embed) * mine[..., None]
    return _all_reduce(x, cfg)


def _gather_vocab(logits: Tensor, cfg: ModelConfig) -> Tensor:
    """A shard's logits [..., V / N] -> every rank's [..., V] (padding rows dropped)."""
    if cfg.shard is None:
        return logits
    return collectives.all_gather_last(logits, cfg.shard)[..., : cfg.vocab_size]


def _proj(lp: LayerParams, name: str, x: Tensor, bias: str | None = None) -> Tensor:
    """One projection; int8 weights carry a per-row scale under ``name + "_scale"``."""
    return linear(x, lp[name], None if bias is None else lp.get(bias), lp.get(name + "_scale"))


def _mlp_block(lp: LayerParams, cfg: ModelConfig, x: Tensor) -> Tensor:
    gate, up = _proj(lp, "w_gate", x), _proj(lp, "w_up", x)
    return _all_reduce(_proj(lp, "w_down", F.silu(gate) * up), cfg)


def _layer(
    lp: LayerParams,
    cfg: ModelConfig,
    kv: KVCache,
    layer: int,
    x: Tensor,
    rope: tuple[Tensor, Tensor],
    meta: AttentionMeta,
    mask: Tensor,
) -> Tensor:
    """One decoder layer, op by op: attention and MLP blocks with pre-norms and residuals."""
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
    x = x + _attention_block(lp, cfg, kv, layer, h, rope, meta, mask)
    return x + _mlp_block(lp, cfg, rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps))


_FUSED_WEIGHTS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")
_MATRICES = tuple(n for n in _FUSED_WEIGHTS if n.startswith("w"))
_FUSED_EXTRAS = ("bq", "bk", "bv", "bo", *(f"{n}_scale" for n in _MATRICES))


def _fused_layers(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    x: Tensor,
    rope: tuple[Tensor, Tensor],
    meta: AttentionMeta,
    mask: Tensor,
) -> Tensor:
    """Every `_layer` as one native call (`ssd.kernels`), for bf16 activations on CPU."""
    return torch.ops.ssd_cpu.decoder_layers(
        x,
        [params.layers[name] for name in _FUSED_WEIGHTS],
        [params.layers.get(name) for name in _FUSED_EXTRAS],
        kv.k_pages,
        kv.v_pages,
        *rope,
        meta.slot_mapping,
        meta.block_tables,
        mask,
        cfg.rms_norm_eps,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
    )


def forward_unchecked(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    tokens: Tensor,
    meta: AttentionMeta,
    logits_at: Tensor | None = None,
) -> tuple[Tensor, KVCache]:
    """The traceable body of :func:`forward`, without donation bookkeeping (a Python side effect
    that a compiled region must not contain; `ssd.jit` wraps this and donates outside)."""
    if tokens.shape != meta.positions.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} vs positions {tuple(meta.positions.shape)}")
    x = _embed(tokens, params, cfg)
    rope = rope_tables(meta.positions, params.inv_freq, x.dtype)
    mask = attention_mask(meta, kv.page_size)
    fused = (
        not cfg.qk_norm
        and cfg.shard is None
        and kv.k_pages.dtype == torch.bfloat16
        and kernels.fused_layers(x, [params.layers[name] for name in _MATRICES])
    )
    if fused:
        x = _fused_layers(params, cfg, kv, x, rope, meta, mask)
    else:
        for layer in range(cfg.num_hidden_layers):
            lp = {key: w[layer] for key, w in params.layers.items()}
            x = _layer(lp, cfg, kv, layer, x, rope, meta, mask)
    if logits_at is not None:  # the head is the largest matrix: apply it only where needed
        x = x.gather(1, logits_at[..., None].expand(-1, -1, x.shape[-1]))
    x = rms_norm(x, params.final_norm, cfg.rms_norm_eps)
    head = linear(x, params.lm_head, None, params.head_scale.get("lm_head"))
    return _gather_vocab(head.float(), cfg), KVCache(kv.k_pages, kv.v_pages)


def forward(
    params: Params,
    cfg: ModelConfig,
    kv: KVCache,
    tokens: Tensor,
    meta: AttentionMeta,
    logits_at: Tensor | None = None,
) -> tuple[Tensor, KVCache]:
    """Run tokens ``[B, Q]`` through the model: ``(logits [B, Q, V] float32, kv)``.

    `logits_at` [B, n] (query indices) computes logits only at those positions: ``[B, n, V]``
    (n = 0 writes the KV and computes no logits, as a prefill whose logits nobody reads).
    Writes this step's K/V into `kv`'s pages in place and consumes `kv`: use the returned cache;
    reusing the old one raises :class:`ssd.pytree.StaleStateError`. Logits of padding rows
    (slot -1) are meaningless.
    """
    check_live(kv, FORWARD)
    logits, new_kv = forward_unchecked(params, cfg, kv, tokens, meta, logits_at)
    return logits, donate(kv, new_kv, FORWARD)
