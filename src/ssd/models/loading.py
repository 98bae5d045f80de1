"""Load HF safetensors checkpoints (single file or sharded) into a :class:`Model` pytree."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from ssd import kernels
from ssd.models import huge_pages
from ssd.models.config import CheckpointError, ModelConfig
from ssd.models.decoder import Params, layer_shapes, rope_inv_freq
from ssd.pytree import pytree_dataclass, static

# Storage dtypes we accept (cast to the requested dtype); quantized or integer ones are refused.
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}

# Params.layers key -> HF tensor name under `model.layers.{i}.`.
_LAYER_NAMES: dict[str, str] = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
    "bo": "self_attn.o_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
}


EMBED, NORM, HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
# How many unused tensor names an error lists per file before summarizing the rest.
_LIST_AT_MOST = 8


@pytree_dataclass
class Model:
    """A loaded model: static config plus the weight pytree."""

    cfg: ModelConfig = static()
    params: Params


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Model:
    """Read `config.json` and `model.safetensors` (or a sharded index) from directory `path`.

    Raises :class:`CheckpointError` naming the file and tensor for anything missing, misshapen
    or stored in an unsupported dtype, and for any tensor the model would not use (tolerated:
    ``lm_head.weight`` next to tied embeddings, as transformers ignores it too, and the rotary
    ``inv_freq`` buffers some older checkpoints carry; ours are recomputed from the config).
    """
    path = Path(path)
    cfg = ModelConfig.from_pretrained(path)
    if torch.device(device).type == "cpu":
        kernels.prepare()  # build before any step is traced (ssd.kernels)
    layer_names = {
        key: [f"model.layers.{i}.{_LAYER_NAMES[key]}" for i in range(cfg.num_hidden_layers)]
        for key in layer_shapes(cfg)
    }
    # A tied checkpoint may still store lm_head.weight; transformers ignores it, and so do we.
    accepted = {EMBED, NORM, HEAD, *(n for names in layer_names.values() for n in names)}
    with _Reader(path) as r:
        # Before reading anything: a tensor this config has no place for (an o_proj bias in a
        # Qwen2 checkpoint, a layer past num_hidden_layers, an unknown module) means the
        # checkpoint and config.json disagree; dropping it would silently change the model.
        r.refuse_unused(accepted, cfg.model_type)

        def get(name: str, shape: tuple[int, ...]) -> Tensor:
            return r.get(name, shape).to(device=device, dtype=dtype)

        on_cpu = torch.device(device).type == "cpu"

        def stack(names: list[str], shape: tuple[int, ...]) -> Tensor:
            # Stacked [L, ...] per weight: one tensor per kind suits scan-style tracing and
            # sharding rules keyed by name; the forward indexes layer i as a view. On CPU the
            # stack is written straight into huge pages (`ssd.models.huge_pages`).
            if not on_cpu:
                return torch.stack([get(name, shape) for name in names])
            out = huge_pages.empty((len(names), *shape), dtype)
            for i, name in enumerate(names):
                out[i].copy_(get(name, shape))
            return out

        layers = {key: stack(layer_names[key], shape) for key, shape in layer_shapes(cfg).items()}
        vocab = (cfg.vocab_size, cfg.hidden_size)
        embed = get(EMBED, vocab)  # a row read a token, unless it is the head too
        if cfg.tie_word_embeddings:
            embed = head = huge_pages.move(embed)
        else:
            head = huge_pages.move(get(HEAD, vocab))
        params = Params(
            embed=embed,
            layers=layers,
            final_norm=get(NORM, (cfg.hidden_size,)),
            lm_head=head,
            inv_freq=rope_inv_freq(cfg).to(device),
        )
    return Model(cfg=cfg, params=params)


class _Reader:
    """Tensor lookup across the checkpoint's safetensors files, with named errors."""

    def __init__(self, path: Path):
        self._stack = ExitStack()
        single, index = path / "model.safetensors", path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e!r})") from e
            self._where: dict[str, Path] | None = {n: path / f for n, f in weight_map.items()}
            self._source = index
        elif single.is_file():
            self._where, self._source = None, single
        else:
            raise CheckpointError(
                f"{path}: no model.safetensors or model.safetensors.index.json "
                "(only safetensors checkpoints are supported)"
            )
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _open(self, file: Path, name: str) -> Any:
        if file not in self._handles:
            if not file.is_file():
                raise CheckpointError(f"{file}: shard file not found (it should hold {name})")
            self._handles[file] = self._stack.enter_context(safe_open(str(file), framework="pt"))
        return self._handles[file]

    def names(self) -> dict[str, Path]:
        """Every tensor name in the checkpoint, with the file that holds it. For a sharded
        checkpoint this is the index's `weight_map` (shards are opened only when read)."""
        if self._where is not None:
            return dict(self._where)
        handle = self._open(self._source, "the weights")
        return dict.fromkeys(handle.keys(), self._source)

    def refuse_unused(self, accepted: set[str], model_type: str) -> None:
        """Raise naming each file and its tensors that are not in `accepted` (rotary `inv_freq`
        buffers excepted: they are derived from the config, and recomputed)."""
        by_file: dict[Path, list[str]] = {}
        for name, file in self.names().items():
            if name not in accepted and not name.endswith("rotary_emb.inv_freq"):
                by_file.setdefault(file, []).append(name)
        if by_file:
            raise CheckpointError(
                "; ".join(
                    f"{file}: unused tensor(s) {_listing(sorted(names))}"
                    for file, names in by_file.items()
                )
                + f" (this {model_type} config.json has no place for them; refusing to drop them)"
            )

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        # A sharded checkpoint's index says which file holds `name`; absent from it = missing.
        file = self._source if self._where is None else self._where.get(name)
        handle = None if file is None else self._open(file, name)
        if handle is None or name not in handle.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise CheckpointError(f"{file or self._source}: missing tensor {name}")
        sl = handle.get_slice(name)
        if sl.get_dtype() not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"{file}: tensor {name} has unsupported dtype {sl.get_dtype()} "
                f"(supported: {', '.join(sorted(_FLOAT_DTYPES))})"
            )
        if tuple(sl.get_shape()) != shape:
            raise CheckpointError(
                f"{file}: tensor {name} has shape {tuple(sl.get_shape())}, expected {shape}"
            )
        tensor: Tensor = handle.get_tensor(name)
        return tensor


def _listing(names: list[str]) -> str:
    more = len(names) - _LIST_AT_MOST
    return ", ".join(names[:_LIST_AT_MOST]) + (f" and {more} more" if more > 0 else "")


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> Any:
    """`transformers.AutoTokenizer` from `path`, refusing a vocabulary larger than the model's.

    `vocab_size` defaults to the `config.json` in `path`. A smaller tokenizer is fine (models pad
    their embedding); a larger one would produce ids the embedding cannot look up.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if vocab_size is None:
        vocab_size = ModelConfig.from_pretrained(path).vocab_size
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load a tokenizer ({e})") from e
    if len(tok) > vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {len(tok)} tokens but the model's vocab_size is {vocab_size}"
        )
    return tok
