"""Functional Llama 3 / Qwen3 models: config, safetensors loading, forward."""

from ssd.models.config import CheckpointError, Llama3RopeScaling, ModelConfig
from ssd.models.decoder import LayerParams, Params, forward, forward_unchecked, layer_shapes
from ssd.models.loading import Model, load_model, load_tokenizer

__all__ = [
    "CheckpointError",
    "LayerParams",
    "Llama3RopeScaling",
    "Model",
    "ModelConfig",
    "Params",
    "forward",
    "forward_unchecked",
    "layer_shapes",
    "load_model",
    "load_tokenizer",
]
