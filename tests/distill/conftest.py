"""A tiny random tied-embedding Llama target, written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

from transformers import LlamaConfig, LlamaForCausalLM

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def randomize(model: torch.nn.Module, seed: int, scale: float = 1.5) -> None:
    """Unit-scale weights: peaked, prefix-dependent distributions (HF's 0.02 init gives nearly
    uniform ones, where every argmax is a near-tie)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale / p.shape[1] ** 0.5)


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("distill") / "target"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    randomize(model, 0)
    model.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: threading costs more than it saves, and a busy 2-core CI box makes a
    2-thread pool spin. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
