"""ModelConfig parsing of HF config.json variants (transformers 4 and 5 layouts)."""

from __future__ import annotations

import json
import re

import pytest

from ssd.models import CheckpointError, Llama3RopeScaling, ModelConfig

BASE = dict(
    model_type="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=8,
)
DROP = object()
SCALING = dict(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)


def test_defaults_for_a_minimal_llama_config():
    cfg = ModelConfig.from_hf_dict(BASE)
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta) == (8, 8, 10000.0)
    assert cfg.rope_scaling is None and not cfg.qk_norm and not cfg.tie_word_embeddings
    assert not cfg.qkv_bias and not cfg.o_bias
    assert cfg.eos_token_ids == () and cfg.bos_token_id is None
    assert hash(cfg) == hash(ModelConfig.from_hf_dict(dict(BASE)))


@pytest.mark.parametrize(
    "rope",
    [
        # transformers 4: top-level rope_theta, rope_scaling with `rope_type` or legacy `type`
        dict(rope_theta=5e5, rope_scaling=dict(rope_type="llama3", **SCALING)),
        dict(rope_theta=5e5, rope_scaling=dict(type="llama3", **SCALING)),
        # transformers 5: one rope_parameters dict
        dict(rope_parameters=dict(rope_type="llama3", rope_theta=5e5, **SCALING)),
    ],
)
def test_llama3_rope_scaling_in_every_layout(rope):
    cfg = ModelConfig.from_hf_dict({**BASE, **rope})
    assert cfg.rope_theta == 5e5
    assert cfg.rope_scaling == Llama3RopeScaling(32.0, 1.0, 4.0, 8192)


def test_qwen3_has_qk_norm_explicit_head_dim_and_eos_list():
    d = {**BASE, "model_type": "qwen3", "head_dim": 32, "eos_token_id": [5, 7], "bos_token_id": 1}
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    cfg = ModelConfig.from_hf_dict(d)
    assert cfg.qk_norm and cfg.head_dim == 32 and cfg.q_size == 256
    assert cfg.eos_token_ids == (5, 7) and cfg.bos_token_id == 1
    assert cfg.rope_scaling is None and cfg.rope_theta == 1e6


# A Qwen2.5 config.json as transformers 4 writes it: sliding-window keys present but switched off.
QWEN2 = {
    **BASE,
    "model_type": "qwen2",
    "num_key_value_heads": 2,
    "rope_theta": 1e6,
    "use_sliding_window": False,
    "sliding_window": 131072,
    "max_window_layers": 21,
    "tie_word_embeddings": True,
}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        # transformers 5 adds the per-layer kinds (and writes sliding_window null)
        {"sliding_window": None, "layer_types": ["full_attention"] * 2},
        # Qwen2's attention has no bias switch: a stray key changes nothing
        {"attention_bias": False},
    ],
)
def test_qwen2_has_qkv_bias_without_o_bias(extra):
    cfg = ModelConfig.from_hf_dict({**QWEN2, **extra})
    assert cfg.model_type == "qwen2" and cfg.qkv_bias and not cfg.o_bias
    assert not cfg.qk_norm and cfg.rope_theta == 1e6 and cfg.rope_scaling is None
    assert cfg.num_key_value_heads == 2 and cfg.head_dim == 8 and cfg.tie_word_embeddings


@pytest.mark.parametrize(
    ("model_type", "attention_bias", "expected"),
    [
        ("llama", True, (True, True)),
        ("llama", False, (False, False)),
        ("qwen3", True, (True, True)),
        ("qwen3", False, (False, False)),
    ],
)
def test_attention_bias_sets_all_four_biases_for_llama_and_qwen3(
    model_type, attention_bias, expected
):
    d = {**BASE, "model_type": model_type, "attention_bias": attention_bias}
    cfg = ModelConfig.from_hf_dict(d)
    assert (cfg.qkv_bias, cfg.o_bias) == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_sliding_window": True}, "unsupported use_sliding_window=True (only False)"),
        (
            {"layer_types": ["full_attention", "sliding_attention"]},
            "unsupported layer_types[1]='sliding_attention' (only 'full_attention')",
        ),
    ],
)
def test_qwen2_sliding_window_is_refused(tmp_path, change, message):
    (tmp_path / "config.json").write_text(json.dumps({**QWEN2, **change}))
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        ModelConfig.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model_type": "mistral"},
            r"unsupported model_type 'mistral' \(supported: llama, qwen2, qwen3\)",
        ),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope type 'yarn'"),
        ({"hidden_act": "gelu"}, "unsupported hidden_act='gelu'"),
        ({"vocab_size": DROP}, "required key 'vocab_size' is missing"),
    ],
)
def test_unsupported_configs_name_the_file_and_value(tmp_path, change, message):
    d = {k: v for k, v in {**BASE, **change}.items() if v is not DROP}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message) as info:
        ModelConfig.from_pretrained(tmp_path)
    assert isinstance(info.value, CheckpointError)
    assert str(tmp_path / "config.json") in str(info.value)


def test_missing_config_json(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape("config.json not found")):
        ModelConfig.from_pretrained(tmp_path)
