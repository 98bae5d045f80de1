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
    out = LLM(target, draft=draft, mode="sd").generate(
        "a b a", SamplingParams(max_tokens=3), use_tqdm=False
    )
    assert len(out[0].token_ids) == 3
