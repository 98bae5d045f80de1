"""Static model configuration read from a Hugging Face `config.json` (Llama 3, Qwen2/2.5, Qwen3).

The three families share one decoder and differ only in static flags derived here:

- ``llama``: ``attention_bias`` puts a bias on all four attention projections (q, k, v, o).
- ``qwen2`` (Qwen2 and Qwen2.5): always biases on q, k and v, never on o; no q/k norms. Its
  sliding-window keys are accepted only while sliding windows are off.
- ``qwen3``: per-head RMSNorm of q and k; ``attention_bias`` as for Llama.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message names the file and, where relevant, the tensor."""


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1 frequency-dependent RoPE scaling (`rope_type: "llama3"`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of a tensor-parallel model (`ssd.models.sharding`): its rank in a
    mesh axis of `size` processes joined by the process group named `group` (the name is what
    functional collectives take, so the sharded forward stays one traceable function), the
    first vocabulary id of its rows of the embedding and head, and whether the ranks share a
    host and meet in shared memory (`ssd.models.collectives`)."""

    group: str
    rank: int
    size: int
    vocab_start: int
    shared_memory: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the forward needs that is not a tensor. Hashable: a static pytree field."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Llama3RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # biases on the q, k and v projections
    o_bias: bool  # bias on the attention output projection
    qk_norm: bool
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # Set on a tensor-parallel shard, whose head/ffn counts above are then its own part.
    shard: Shard | None = None

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ModelConfig:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise CheckpointError(f"{file}: config.json not found in checkpoint directory {path}")
        try:
            d = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{file}: not valid JSON ({e})") from e
        return cls.from_hf_dict(d, source=str(file))

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
        """Parse an HF config dict; `source` names the file in error messages."""

        def need(key: str) -> Any:
            if key not in d:
                raise CheckpointError(f"{source}: required key {key!r} is missing")
            return d[key]

        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"{source}: unsupported model_type {model_type!r} "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        _reject(source, "hidden_act", d.get("hidden_act", "silu"), "silu")
        _reject(source, "mlp_bias", d.get("mlp_bias", False), False)
        _reject(source, "use_sliding_window", d.get("use_sliding_window", False), False)
        # transformers 5 lists each layer's attention kind; only full attention is implemented.
        for i, kind in enumerate(d.get("layer_types") or ()):
            _reject(source, f"layer_types[{i}]", kind, "full_attention")
        hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
        theta, scaling = _rope(d, source)
        # Qwen2's attention hard-codes its biases (q/k/v yes, o no) and has no config key for
        # them; Llama and Qwen3 put `attention_bias` on all four projections.
        attention_bias = bool(d.get("attention_bias", False))
        qkv_bias, o_bias = (True, False) if model_type == "qwen2" else (attention_bias,) * 2
        eos = d.get("eos_token_id")
        eos_ids = tuple(
            int(t) for t in (eos if isinstance(eos, list) else [] if eos is None else [eos])
        )
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            qk_norm=model_type == "qwen3",
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def _reject(source: str, key: str, value: Any, supported: Any) -> None:
    if value != supported:
        raise CheckpointError(f"{source}: unsupported {key}={value!r} (only {supported!r})")


def _rope(d: Mapping[str, Any], source: str) -> tuple[float, Llama3RopeScaling | None]:
    # transformers 4 writes `rope_theta` + `rope_scaling` (key `type` or `rope_type`);
    # transformers 5 writes one `rope_parameters` dict holding `rope_theta` too.
    params = dict(d.get("rope_scaling") or {})
    params.update(d.get("rope_parameters") or {})
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise CheckpointError(
            f"{source}: unsupported rope type {rope_type!r} (supported: default, llama3)"
        )
    try:
        scaling = Llama3RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings") or d["max_position_embeddings"]
            ),
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: llama3 rope scaling is missing {e.args[0]!r}") from e
    return theta, scaling
