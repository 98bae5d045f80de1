"""Checkpoint loading: parameter layout, sharded files, dtypes, and named errors."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import CHECKPOINTS, random_tokens, rel_err
from ssd.models import CheckpointError, layer_shapes, load_model, load_tokenizer
from ssd.pytree import tree_leaves
from ssd.scoring import Scorer

UP = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture
def ckpt(checkpoints, tmp_path):
    """A private copy of the untied Llama checkpoint that a test may damage."""
    return shutil.copytree(checkpoints["llama"], tmp_path / "ckpt")


def _rewrite(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors")


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_param_layout(name, models):
    model = models[name]
    cfg, p = model.cfg, model.params
    expected = layer_shapes(cfg)
    assert set(p.layers) == set(expected)
    for key, shape in expected.items():
        assert p.layers[key].shape == (cfg.num_hidden_layers, *shape)
    assert ("bq" in p.layers) == ("bk" in p.layers) == ("bv" in p.layers) == cfg.qkv_bias
    assert ("bo" in p.layers) == cfg.o_bias and ("q_norm" in p.layers) == cfg.qk_norm
    assert p.embed.shape == p.lm_head.shape == (cfg.vocab_size, cfg.hidden_size)
    assert (p.lm_head is p.embed) == cfg.tie_word_embeddings
    assert p.inv_freq.shape == (cfg.head_dim // 2,) and p.inv_freq.dtype == torch.float32


def test_each_family_has_its_own_attention_biases(models):
    keys = {name: {k for k in m.params.layers if k.startswith("b")} for name, m in models.items()}
    assert keys["llama_bias_gqa2"] == {"bq", "bk", "bv", "bo"}
    assert keys["qwen2"] == {"bq", "bk", "bv"}
    assert keys["llama"] == keys["qwen3_tied"] == set()


def test_sharded_checkpoint_loads_like_single_file(checkpoints, models, tmp_path):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(checkpoints["llama"])
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    sharded, single = load_model(tmp_path), models["llama"]
    for a, b in zip(tree_leaves(sharded.params), tree_leaves(single.params), strict=True):
        assert torch.equal(a, b)


def test_bfloat16_load_runs_close_to_fp32(checkpoints, models):
    model = load_model(checkpoints["qwen3_tied"], dtype=torch.bfloat16)
    assert model.params.embed.dtype == torch.bfloat16
    assert model.params.inv_freq.dtype == torch.float32
    tokens = random_tokens(10, seed=1)
    runner = Scorer(model, batch=1, page_size=4)
    assert runner.kv.k_pages.dtype == torch.bfloat16
    [low] = runner.feed([tokens])
    [ref] = Scorer(models["qwen3_tied"], batch=1, page_size=4).feed([tokens])
    assert low.dtype == torch.float32
    assert rel_err(low, ref) <= 0.1


def test_missing_weights_file(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=re.escape("no model.safetensors or model.safetensors.index")
    ):
        load_model(ckpt)


def test_missing_tensor_names_file_and_tensor(ckpt):
    _rewrite(ckpt, lambda t: t.pop(UP))
    with pytest.raises(CheckpointError, match=re.escape(f"model.safetensors: missing tensor {UP}")):
        load_model(ckpt)


def test_missing_untied_lm_head(ckpt):
    _rewrite(ckpt, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=re.escape("missing tensor lm_head.weight")):
        load_model(ckpt)


def test_wrong_shape_names_file_tensor_and_shapes(ckpt):
    _rewrite(ckpt, lambda t: t.update({UP: t[UP].t().contiguous()}))
    with pytest.raises(CheckpointError) as info:
        load_model(ckpt)
    msg = str(info.value)
    assert str(ckpt / "model.safetensors") in msg and UP in msg
    assert "shape (64, 128), expected (128, 64)" in msg


def test_unsupported_dtype_names_file_and_tensor(ckpt):
    _rewrite(ckpt, lambda t: t.update({UP: t[UP].to(torch.int8)}))
    with pytest.raises(CheckpointError, match=re.escape(f"tensor {UP} has unsupported dtype I8")):
        load_model(ckpt)


def test_unsupported_model_type(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(
        CheckpointError, match=re.escape("config.json: unsupported model_type 'gpt2'")
    ):
        load_model(ckpt)


def test_missing_shard_names_the_shard(checkpoints, tmp_path):
    from transformers import LlamaForCausalLM

    LlamaForCausalLM.from_pretrained(checkpoints["llama"]).save_pretrained(
        tmp_path, max_shard_size="40KB"
    )
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"{shard.name}: shard file not found")):
        load_model(tmp_path)


def _save_word_tokenizer(path, n):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(n - 1)} | {"<unk>": n - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)


def test_tokenizer_within_vocab_loads(ckpt):
    _save_word_tokenizer(ckpt, 200)
    tok = load_tokenizer(ckpt)
    assert len(tok) == 200 and tok("w3 w7")["input_ids"] == [3, 7]


def test_tokenizer_larger_than_vocab_is_refused(ckpt):
    _save_word_tokenizer(ckpt, 300)
    with pytest.raises(
        CheckpointError, match="tokenizer has 300 tokens but the model's vocab_size is 256"
    ):
        load_tokenizer(ckpt)


O_BIAS = "model.layers.0.self_attn.o_proj.bias"


def test_qwen2_checkpoint_with_an_o_proj_bias_is_refused(checkpoints, tmp_path):
    """Qwen2 has no output-projection bias: loading one would silently drop it."""
    ckpt = shutil.copytree(checkpoints["qwen2"], tmp_path / "ckpt")
    _rewrite(ckpt, lambda t: t.update({O_BIAS: torch.ones(64)}))
    with pytest.raises(CheckpointError) as info:
        load_model(ckpt)
    msg = str(info.value)
    assert f"{ckpt / 'model.safetensors'}: unused tensor(s) {O_BIAS} (" in msg
    assert "qwen2 config.json" in msg


@pytest.mark.parametrize(
    "extra",
    [
        "model.layers.0.mlp.gate_proj.bias",  # a bias the family does not have
        "model.layers.2.mlp.up_proj.weight",  # a layer past num_hidden_layers
        "model.layers.1.self_attn.q_norm.weight",  # a q/k norm outside Qwen3
        "model.embed_positions.weight",  # an unknown module
        "lm_head.bias",
    ],
)
def test_any_unexpected_tensor_is_refused(ckpt, extra):
    _rewrite(ckpt, lambda t: t.update({extra: torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=re.escape(f"unused tensor(s) {extra} (")):
        load_model(ckpt)


def test_unused_tensors_are_listed_then_counted(ckpt):
    """A config with fewer layers than the weights leaves a whole layer (9 tensors) unused."""
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError) as info:
        load_model(ckpt)
    msg = str(info.value)
    assert "model.layers.1.input_layernorm.weight" in msg and " and 1 more (" in msg
    assert "model.layers.0." not in msg


def test_sharded_checkpoint_with_an_unused_tensor_names_its_shard(checkpoints, tmp_path):
    from transformers import Qwen2ForCausalLM

    Qwen2ForCausalLM.from_pretrained(checkpoints["qwen2"]).save_pretrained(
        tmp_path, max_shard_size="40KB"
    )
    index_file = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    tensors[O_BIAS] = torch.ones(64)
    save_file(tensors, shard)
    index["weight_map"][O_BIAS] = shard.name
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=re.escape(f"{shard}: unused tensor(s) {O_BIAS} (")):
        load_model(tmp_path)


def test_tolerated_extras_load(checkpoints, models, tmp_path):
    """A tied checkpoint may still store lm_head.weight (ignored, as in transformers), and
    older checkpoints carry rotary `inv_freq` buffers (recomputed from the config)."""
    ckpt = shutil.copytree(checkpoints["qwen3_tied"], tmp_path / "ckpt")
    inv_freq = "model.layers.0.self_attn.rotary_emb.inv_freq"

    def add(t):
        t.update({"lm_head.weight": torch.zeros(256, 64), inv_freq: torch.zeros(16)})

    _rewrite(ckpt, add)
    loaded, ref = load_model(ckpt), models["qwen3_tied"]
    assert loaded.params.lm_head is loaded.params.embed
    for a, b in zip(tree_leaves(loaded.params), tree_leaves(ref.params), strict=True):
        assert torch.equal(a, b)
