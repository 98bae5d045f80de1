"""The draft model: built from the target's layers, stored as only what it does not share.

A draft with the target's hidden size can reuse the target's tied embedding (which is also the
LM head), so it shares tokenizer and vocabulary by construction and costs only its few layers
plus the LM head per token. We start its layers from a subset of the target's (the first ones
see the same embeddings, the middle ones hold the copying circuits, the last one already maps
a residual stream to next-token logits), optionally with each FFN cut down to its most
important neurons to afford more layers, and its final norm from the target's. Tensors of
`frozen` layers stay bit-identical to the target's, so, like the embedding, they are
*shared*: the artifact stores them as references, not weights.

Artifact (`draft.json` + `weights.safetensors`): the manifest names the target layers used,
the shared tensors with a sha256 of their bytes (so a different target is refused), and the
draft's config; the weights file holds the trained tensors in bf16. `ssd.prepare.assemble_draft`
turns it plus the target into an ordinary Hugging Face directory (fp32) that both `transformers`
and `ssd.models.load_model` read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from ssd.prepare import DRAFT_FORMAT, shared_digest


def draft_config(
    target_config: dict[str, Any], num_layers: int, ffn: int | None = None
) -> dict[str, Any]:
    """The target's config with fewer layers (and maybe a narrower FFN): same hidden size,
    heads, vocab, RoPE, norms."""
    cfg = {k: v for k, v in target_config.items() if not k.startswith("_")}
    cfg["num_hidden_layers"] = num_layers
    if ffn is not None:
        cfg["intermediate_size"] = ffn
    cfg["tie_word_embeddings"] = True
    return cfg


@torch.no_grad()
def ffn_importance(
    target: LlamaForCausalLM, layers: Sequence[int], calib: Sequence[torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Per target layer in `layers`, how much each FFN neuron contributes on the calibration
    sequences: mean |activation| (the input of `down_proj`) times the norm of its output column."""
    sums = {src: torch.zeros(target.config.intermediate_size) for src in layers}
    count = 0

    def hook(src: int) -> Any:
        def add(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
            sums[src].add_(args[0].detach().abs().float().flatten(0, -2).sum(0))

        return add

    handles = [
        target.model.layers[src].mlp.down_proj.register_forward_pre_hook(hook(src))
        for src in sorted(set(layers))
    ]
    try:
        for ids in calib:
            target(ids.long()[None])
            count += int(ids.numel())
    finally:
        for h in handles:
            h.remove()
    return {
        src: sums[src] / max(count, 1) * target.model.layers[src].mlp.down_proj.weight.norm(dim=0)
        for src in sums
    }


def init_draft(
    target: LlamaForCausalLM,
    layers: Sequence[int],
    frozen: Sequence[int] = (),
    ffn: int | None = None,
    importance: dict[int, torch.Tensor] | None = None,
) -> LlamaForCausalLM:
    """A draft whose layer i starts as target layer `layers[i]`; the embedding *is* the
    target's tensor (not a copy) and never trains.

    With `ffn` below the target's FFN width, each layer keeps only its `ffn` most important
    neurons (`importance`, from `ffn_importance`): a narrow FFN buys depth under a fixed
    budget of multiply-adds, and depth is what lets the draft keep the target's copying
    circuits (previous-token and induction heads sit in different layers). A layer in
    `frozen` keeps every tensor it can take whole from the target untrained: the whole layer
    at full width, its attention block and norms when the FFN is narrowed.
    """
    if not target.config.tie_word_embeddings:
        raise ValueError("the draft reuses the target's tied embedding; this target is untied")
    width = target.config.intermediate_size
    ffn = ffn or width
    if ffn > width:
        raise ValueError(f"ffn {ffn} is wider than the target's FFN ({width})")
    if ffn < width and importance is None:
        raise ValueError("a narrower FFN needs neuron importances (see ffn_importance)")
    cfg = LlamaConfig(**draft_config(target.config.to_dict(), len(layers), ffn))
    draft = LlamaForCausalLM(cfg)
    draft = draft.to(target.dtype)  # type: ignore[arg-type]  # transformers stub
    with torch.no_grad():
        for i, src in enumerate(layers):
            state = target.model.layers[src].state_dict()
            if ffn < width:
                assert importance is not None
                keep = importance[src].topk(ffn).indices.sort().values
                for name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                    state[name] = state[name][keep]
                state["mlp.down_proj.weight"] = state["mlp.down_proj.weight"][:, keep]
            draft.model.layers[i].load_state_dict(state)
        draft.model.norm.load_state_dict(target.model.norm.state_dict())
    draft.model.embed_tokens.weight = target.model.embed_tokens.weight
    draft.lm_head.weight = draft.model.embed_tokens.weight
    draft.model.embed_tokens.weight.requires_grad_(False)
    for i in frozen:
        layer = draft.model.layers[i]
        if ffn == width:
            layer.requires_grad_(False)
        else:
            for part in (layer.self_attn, layer.input_layernorm, layer.post_attention_layernorm):
                part.requires_grad_(False)
    return draft


def _shared_names(draft: LlamaForCausalLM, layers: Sequence[int]) -> dict[str, str]:
    """draft tensor name -> target tensor name, for everything taken from the target as is
    (the embedding and every frozen tensor of a layer)."""
    out = {"model.embed_tokens.weight": "model.embed_tokens.weight"}
    for i, layer in enumerate(draft.model.layers):
        pre, src = f"model.layers.{i}.", f"model.layers.{layers[i]}."
        out.update({pre + n: src + n for n, p in layer.named_parameters() if not p.requires_grad})
    return out


def save_artifact(
    draft: LlamaForCausalLM,
    layers: Sequence[int],
    frozen: Sequence[int],
    out_dir: Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the trained tensors (bf16) and the manifest; shared tensors are referenced."""
    state = {k: v for k, v in draft.state_dict().items() if k != "lm_head.weight"}
    shared = _shared_names(draft, layers)
    own = {
        k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items() if k not in shared
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(own, str(out_dir / "weights.safetensors"))
    manifest = {
        "format": DRAFT_FORMAT,
        "target_layers": list(layers),
        "frozen": list(frozen),
        "shared": shared,
        "shared_sha256": shared_digest({k: state[k] for k in shared}),
        "config": draft_config(draft.config.to_dict(), len(layers)),
        **(extra or {}),
    }
    (out_dir / "draft.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir
