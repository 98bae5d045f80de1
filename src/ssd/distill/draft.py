"""The draft model: built from the target's layers, stored as only what it does not share.

A draft with the target's hidden size can reuse the target's tied embedding (which is also the
LM head), so it shares tokenizer and vocabulary by construction and costs only its few layers
plus the LM head per token. We start its layers from a subset of the target's (the first ones
see the same embeddings; the last one already maps a residual stream to next-token logits)
and its final norm from the target's. Layers listed as `frozen` stay bit-identical to the
target layer they came from, so, like the embedding, they are *shared*: the artifact stores
them as references, not weights.

Artifact (`draft.json` + `weights.safetensors`): the manifest names the target layers used,
the shared tensors with a sha256 of their bytes (so a different target is refused), and the
draft's config; the weights file holds the trained tensors in bf16. `assemble` turns it plus
the target into an ordinary Hugging Face directory (fp32) that both `transformers` and
`ssd.models.load_model` read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

FORMAT = 1
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
)


def draft_config(target_config: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """The target's config with fewer layers: same hidden size, heads, vocab, RoPE, norms."""
    cfg = {k: v for k, v in target_config.items() if not k.startswith("_")}
    cfg["num_hidden_layers"] = num_layers
    cfg["tie_word_embeddings"] = True
    return cfg


def init_draft(
    target: LlamaForCausalLM, layers: Sequence[int], frozen: Sequence[int] = ()
) -> LlamaForCausalLM:
    """A draft whose layer i is a copy of target layer `layers[i]`; the embedding *is* the
    target's tensor (not a copy) and never trains; draft layers in `frozen` do not train."""
    if not target.config.tie_word_embeddings:
        raise ValueError("the draft reuses the target's tied embedding; this target is untied")
    cfg = LlamaConfig(**draft_config(target.config.to_dict(), len(layers)))
    draft = LlamaForCausalLM(cfg)
    draft = draft.to(target.dtype)  # type: ignore[arg-type]  # transformers stub
    with torch.no_grad():
        for i, src in enumerate(layers):
            draft.model.layers[i].load_state_dict(target.model.layers[src].state_dict())
        draft.model.norm.load_state_dict(target.model.norm.state_dict())
    draft.model.embed_tokens.weight = target.model.embed_tokens.weight
    draft.lm_head.weight = draft.model.embed_tokens.weight
    draft.model.embed_tokens.weight.requires_grad_(False)
    for i in frozen:
        draft.model.layers[i].requires_grad_(False)
    return draft


def _shared_names(layers: Sequence[int], frozen: Sequence[int], names: Sequence[str]) -> dict:
    """draft tensor name -> target tensor name, for everything taken from the target as is."""
    out = {"model.embed_tokens.weight": "model.embed_tokens.weight"}
    for i in frozen:
        pre, src = f"model.layers.{i}.", f"model.layers.{layers[i]}."
        out.update({n: src + n[len(pre) :] for n in names if n.startswith(pre)})
    return out


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _target_tensors(target_dir: Path, names: Sequence[str]) -> dict[str, torch.Tensor]:
    with safe_open(str(target_dir / "model.safetensors"), "pt") as f:
        return {n: f.get_tensor(n) for n in names}


def save_artifact(
    draft: LlamaForCausalLM,
    layers: Sequence[int],
    frozen: Sequence[int],
    out_dir: Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the trained tensors (bf16) and the manifest; shared tensors are referenced."""
    state = {k: v for k, v in draft.state_dict().items() if k != "lm_head.weight"}
    shared = _shared_names(layers, frozen, list(state))
    own = {
        k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items() if k not in shared
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(own, str(out_dir / "weights.safetensors"))
    manifest = {
        "format": FORMAT,
        "target_layers": list(layers),
        "frozen": list(frozen),
        "shared": shared,
        "shared_sha256": _digest({k: state[k] for k in shared}),
        "config": draft_config(draft.config.to_dict(), len(layers)),
        **(extra or {}),
    }
    (out_dir / "draft.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def assemble(artifact_dir: Path, target_dir: Path, out_dir: Path) -> Path:
    """Build the Hugging Face draft directory from an artifact and its target (atomically)."""
    manifest = json.loads((artifact_dir / "draft.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{artifact_dir}: unsupported draft artifact format {manifest.get('format')}"
        )
    shared_src = _target_tensors(target_dir, sorted(set(manifest["shared"].values())))
    shared = {k: shared_src[v] for k, v in manifest["shared"].items()}
    if _digest(shared) != manifest["shared_sha256"]:
        raise ValueError(
            f"the target in {target_dir} is not the one the draft in {artifact_dir} was "
            "distilled from (its shared tensors differ)"
        )
    with safe_open(str(artifact_dir / "weights.safetensors"), "pt") as f:
        own = {n: f.get_tensor(n).to(torch.float32) for n in f.keys()}  # noqa: SIM118
    tmp = out_dir.with_name(out_dir.name + ".build")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.to(torch.float32).contiguous() for k, v in {**shared, **own}.items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(manifest["config"], architectures=["LlamaForCausalLM"], dtype="float32")
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in _TOKENIZER_FILES:
        if (target_dir / name).exists():
            shutil.copy2(target_dir / name, tmp / name)
    (tmp / ".complete").write_text(json.dumps({"artifact": str(artifact_dir)}) + "\n")
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        shutil.rmtree(old)
    os.replace(tmp, out_dir)
    return out_dir
