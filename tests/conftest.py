"""Shared fixtures: hypothesis profiles and tiny random Llama 3 / Qwen3 checkpoints."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import CHECKPOINTS, COMMON
from ssd.models import Model, load_model

# Deterministic example generation: CI runs the same examples every time. Set
# SSD_HYPOTHESIS_PROFILE=explore locally to search with fresh random examples.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("SSD_HYPOTHESIS_PROFILE", "ci"))


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-scale activations instead of HF's std-0.02 init, which makes attention
    nearly uniform and would hide masking or position bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                scale = 0.5 if name.endswith("bias") else 0.2
                base = 0.0 if name.endswith("bias") else 1.0
                p.copy_(base + scale * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / p.shape[1] ** 0.5)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for seed, (name, (cfg_cls, model_cls, extra)) in enumerate(CHECKPOINTS.items()):
        torch.manual_seed(seed)
        model = model_cls(cfg_cls(**COMMON, **extra))
        _randomize(model, seed)
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def models(checkpoints: dict[str, Path]) -> dict[str, Model]:
    return {name: load_model(path) for name, path in checkpoints.items()}


@pytest.fixture(scope="session")
def hf_logits(checkpoints: dict[str, Path]) -> Callable[[str, list[int]], torch.Tensor]:
    """Reference fp32 logits ``[T, V]`` of `transformers` for one unpadded sequence."""
    loaded: dict[str, torch.nn.Module] = {}

    def run(name: str, tokens: list[int]) -> torch.Tensor:
        if name not in loaded:
            model_cls = CHECKPOINTS[name][1]
            loaded[name] = model_cls.from_pretrained(checkpoints[name]).eval()
        with torch.no_grad():
            out = loaded[name](torch.tensor([tokens])).logits[0]
        return out.float()

    return run
