"""The LLM facade around the engines: streaming, mode options, and pair checks."""

from __future__ import annotations

import shutil

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from helpers import COMMON
from ssd import LLM, SamplingParams

PROMPTS = [[5, 17, 99, 3], [200, 1, 9]]


@pytest.mark.parametrize("options", [{}, {"mode": "sd"}, {"mode": "ssd", "backup": "fast"}])
def test_stream_yields_the_generated_tokens_in_order(options, checkpoints):
    path = checkpoints["llama"]
    draft = {"draft": checkpoints["llama_bias_gqa2"]} if options else {}
    llm = LLM(path, max_batch=2, k=3, **draft, **options)
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=17, ignore_eos=True)
    final = llm.generate([*PROMPTS, []], params, use_tqdm=False)
    pieces: dict[int, list[int]] = {0: [], 1: []}
    events = list(llm.generate_stream([*PROMPTS, []], params))
    assert events[0].request_id == 2 and events[0].finish_reason == "error"
    for ev in events[1:]:
        pieces[ev.request_id] += ev.new_token_ids
        assert ev.token_ids == pieces[ev.request_id]
    assert [pieces[0], pieces[1]] == [final[0].token_ids, final[1].token_ids]
    assert all(len(p) == 17 for p in pieces.values())


def test_mode_options_are_checked(checkpoints):
    path = checkpoints["llama"]
    with pytest.raises(ValueError, match="needs a draft"):
        LLM(path, mode="ssd")
    with pytest.raises(ValueError, match="mode must be"):
        LLM(path, mode="eagle")
    with pytest.raises(ValueError, match="saguaro_c"):
        LLM(path, draft=path, saguaro_c=0.0)
    with pytest.raises(ValueError, match="fan-out"):
        LLM(path, draft=path, mode="ssd", k=2, fanout=[1, 1])
    with pytest.raises(ValueError, match="backup"):
        LLM(path, draft=path, mode="ssd", backup="random")
    with pytest.raises(ValueError, match="backup"):  # before a draft process is started
        LLM(path, draft=path, mode="ssd", backup="random", draft_process=True)
    with pytest.raises(ValueError, match="floating-point"):
        LLM(path, draft=path, mode="sd", draft_dtype="int64")
    with pytest.raises(ValueError, match="floating-point"):
        LLM(path, dtype="bits")


def test_a_draft_on_cpu_gets_one_branch_per_draft_token(checkpoints):
    """Each branch is a row of every tree step, which costs arithmetic on a CPU core."""
    path = checkpoints["llama"]
    assert LLM(path, draft=path, mode="ssd", k=3).runner.drafter.budget == 3
    assert LLM(path, draft=path, mode="ssd", k=3, budget=7).runner.drafter.budget == 7


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"mode": "sd", "k": 5000},
            r"k \(draft tokens per round\) must be an integer in \[1, 32\]",
        ),
        ({"mode": "sd", "k": 0}, "k .draft tokens"),
        ({"mode": "sd", "k": 4, "max_model_len": 5}, "exceeds the context 5"),
        ({"mode": "ssd", "budget": 10**9}, "budget must be an integer in"),
        ({"mode": "ssd", "k": 1, "fanout": [1, 10**6]}, "fan-out needs K.1 = 2 integers"),
        ({"mode": "sd", "fanout": [1] * 5}, "shape SSD's speculation cache"),
        ({"mode": "ssd", "fanout": "wide"}, "fanout must be one of .'ranked', 'geometric'. or"),
        ({"mode": "sd", "max_batch": 0}, "max_batch must be"),
        ({"mode": "sd", "page_size": 0}, "page_size must be"),
        ({"mode": "sd", "num_pages": -3}, "num_pages must be"),
        ({"mode": "sd", "draft_timeout_s": 0}, "draft_timeout_s"),
        ({"mode": "sd", "max_batch": 10**7}, "the KV caches need .* GiB, more than"),
        ({"mode": "ssd", "budget": 0}, "budget must be an integer in"),
    ],
)
def test_engine_options_are_refused_before_any_allocation(options, match, checkpoints, monkeypatch):
    """Each bad option gets one clear error, raised before a weight or a page is allocated."""

    def no(*args, **kwargs):
        raise AssertionError("allocated before the options were checked")

    monkeypatch.setattr("ssd.llm.load_model", no)
    monkeypatch.setattr("ssd.llm.alloc_kv_cache", no)
    path = checkpoints["llama"]
    with pytest.raises(ValueError, match=match):
        LLM(path, draft=path, **options)


def test_a_request_larger_than_the_cache_fails_alone(checkpoints):
    llm = LLM(checkpoints["llama"], max_batch=2, page_size=4, num_pages=6)  # 24 KV slots
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (8, 40, 8)]
    out = llm.generate([[5, 17, 99]] * 3, params, use_tqdm=False)
    assert out[1].finish_reason == "error" and "more than the whole cache" in (out[1].error or "")
    assert [len(o.token_ids) for o in out] == [8, 0, 8]
    assert out[0].token_ids == out[2].token_ids


def _tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0], eos_token=words[1])


def test_a_draft_with_another_vocabulary_or_tokenizer_is_refused(checkpoints, tmp_path):
    torch.manual_seed(0)
    bigger = tmp_path / "bigger"
    LlamaForCausalLM(LlamaConfig(**{**COMMON, "vocab_size": 300})).save_pretrained(bigger)
    with pytest.raises(ValueError, match="vocab_size 300 differs"):
        LLM(checkpoints["llama"], draft=bigger, mode="sd")
    target, draft = tmp_path / "t", tmp_path / "d"
    shutil.copytree(checkpoints["llama"], target)
    shutil.copytree(checkpoints["llama_bias_gqa2"], draft)
    _tokenizer(["<unk>", "</s>", "a", "b"]).save_pretrained(target)
    _tokenizer(["<unk>", "</s>", "a", "c"]).save_pretrained(draft)
    with pytest.raises(ValueError, match="tokenizer differs"):
        LLM(target, draft=draft, mode="sd")
    _tokenizer(["<unk>", "</s>", "a", "b"]).save_pretrained(draft)
    out = LLM(target, draft=draft, mode="sd").generate(  # sampled: EOS may come, so ignore it
        "a b a", SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False
    )
    assert len(out[0].token_ids) == 3
