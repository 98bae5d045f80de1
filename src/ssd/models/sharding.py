"""Tensor parallelism from sharding rules: which logical axis each weight dimension carries, and
how a mesh axis of N processes splits each logical axis.

Logical axes: ``heads`` (query heads), ``kv_heads``, ``ffn`` (the MLP's inner width) and
``vocab``. Projections into an axis (q/k/v, gate/up) are split by output rows (column
parallel); projections out of one (o, down) by input columns (row parallel), so each rank's
partial sum is completed by one all-reduce after the attention block and one after the MLP.
The embedding and the head are split by vocabulary rows: a rank looks up only its own ids (an
all-reduce fills in the rest) and computes the logits of its own ids (an all-gather joins
them). The KV cache follows the kv heads. Everything else (norms, the o bias, RoPE) is
replicated.

Grouped-query attention with fewer kv heads than ranks replicates each kv head on the ranks
whose query heads read it; head counts that split unevenly are refused with the reason. The
vocabulary is padded with zero rows to a multiple of N (the padded logits are dropped).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ssd.models.config import ModelConfig, Shard
from ssd.models.decoder import Params
from ssd.models.loading import Model

# Params.layers key -> the logical axis of each dimension after the stacked layer dimension
# (None: replicated). int8 scales ("<name>_scale", one per output row) follow dimension 0.
LAYER_AXES: dict[str, tuple[str | None, ...]] = {
    "attn_norm": (None,),
    "wq": ("heads", None),
    "bq": ("heads",),
    "wk": ("kv_heads", None),
    "bk": ("kv_heads",),
    "wv": ("kv_heads", None),
    "bv": ("kv_heads",),
    "wo": (None, "heads"),
    "bo": (None,),
    "q_norm": (None,),
    "k_norm": (None,),
    "mlp_norm": (None,),
    "w_gate": ("ffn", None),
    "w_up": ("ffn", None),
    "w_down": (None, "ffn"),
}


def check_tensor_parallel(cfg: ModelConfig, size: int) -> None:
    """Raise ValueError if `cfg` cannot be split over `size` ranks (before anything loads)."""
    if size < 1:
        raise ValueError(f"tensor_parallel must be >= 1, got {size}")
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    if heads % size:
        raise ValueError(f"{heads} attention heads do not split over {size} ranks")
    if kv % size and size % kv:
        raise ValueError(
            f"{kv} kv heads neither split over {size} ranks nor replicate onto them "
            "(one of the two counts must divide the other)"
        )
    if cfg.intermediate_size % size:
        raise ValueError(f"intermediate_size {cfg.intermediate_size} does not split over {size}")


def local_config(
    cfg: ModelConfig, group: str, rank: int, size: int, shared_memory: bool = False
) -> ModelConfig:
    """The config of rank `rank`'s shard: its own head and ffn counts, and its `Shard`."""
    check_tensor_parallel(cfg, size)
    kv = cfg.num_key_value_heads
    return dataclasses.replace(
        cfg,
        num_attention_heads=cfg.num_attention_heads // size,
        num_key_value_heads=kv // size if kv % size == 0 else 1,
        intermediate_size=cfg.intermediate_size // size,
        shard=Shard(group, rank, size, rank * _vocab_rows(cfg, size), shared_memory),
    )


def shard_model(
    model: Model, group: str, rank: int, size: int, shared_memory: bool = False
) -> Model:
    """Rank `rank`'s part of every weight (copies: the full tensors can be freed)."""
    cfg = model.cfg
    local = local_config(cfg, group, rank, size, shared_memory)
    rows = {axis: _rows(cfg, axis, rank, size) for axis in ("heads", "kv_heads", "ffn")}

    def split(t: Tensor, axes: tuple[str | None, ...]) -> Tensor:
        for dim, axis in enumerate(axes, start=1):  # dim 0 is the stacked layer
            if axis is not None:
                t = t.index_select(dim, rows[axis].to(t.device))
        return t.contiguous()

    p = model.params
    layers = {}
    for key, t in p.layers.items():
        name = key.removesuffix("_scale")
        axes = LAYER_AXES[name][:1] if key.endswith("_scale") else LAYER_AXES[name]
        layers[key] = split(t, axes)
    embed = _vocab_part(p.embed, cfg, rank, size)
    tied = p.lm_head is p.embed
    head_scale = {k: _vocab_part(v, cfg, rank, size) for k, v in p.head_scale.items()}
    params = Params(
        embed=embed,
        layers=layers,
        final_norm=p.final_norm,
        lm_head=embed if tied else _vocab_part(p.lm_head, cfg, rank, size),
        inv_freq=p.inv_freq,
        head_scale=head_scale,
    )
    return Model(cfg=local, params=params)


def _vocab_rows(cfg: ModelConfig, size: int) -> int:
    return -(-cfg.vocab_size // size)


def _vocab_part(t: Tensor, cfg: ModelConfig, rank: int, size: int) -> Tensor:
    """Rows [rank * n, (rank + 1) * n) of a vocabulary-indexed tensor, zero rows past the end."""
    n = _vocab_rows(cfg, size)
    part = t[rank * n : (rank + 1) * n]
    if part.shape[0] < n:
        part = torch.cat([part, part.new_zeros(n - part.shape[0], *part.shape[1:])])
    return part.clone()


def _rows(cfg: ModelConfig, axis: str, rank: int, size: int) -> Tensor:
    """The rows of a projection's output that rank `rank` owns along a logical axis."""
    d = cfg.head_dim
    if axis == "ffn":
        n = cfg.intermediate_size // size
        return torch.arange(rank * n, (rank + 1) * n)
    if axis == "heads":
        n = cfg.num_attention_heads // size
        heads = torch.arange(rank * n, (rank + 1) * n)
    else:
        kv = cfg.num_key_value_heads
        if kv % size == 0:
            heads = torch.arange(rank * (kv // size), (rank + 1) * (kv // size))
        else:  # fewer kv heads than ranks: the one kv head this rank's query heads read
            heads = torch.tensor([rank * kv // size])
    return (heads[:, None] * d + torch.arange(d)).flatten()
