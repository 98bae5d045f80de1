"""The real SmolLM2-135M-Instruct (converted from its wheel once, then cached): logits parity
with `transformers` and identical greedy chat replies."""

from __future__ import annotations

import pytest
import torch

from ssd import LLM, SamplingParams
from ssd.prepare import prepare_smollm2
from ssd.scoring import score

CHATS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Give me three tips for sleeping better.",
]


@pytest.fixture(scope="module")
def smollm2():
    path = prepare_smollm2(progress=False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False
        )
        for c in CHATS
    ]
    chats = [tok.encode(t, add_special_tokens=False) for t in texts]
    return path, hf, tok, chats


def test_prefill_logits_match_transformers(smollm2):
    path, hf, _, chats = smollm2
    llm = LLM(path, max_batch=1)
    model = llm.model
    ids = chats[0]
    ours = score(model, ids)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0]
    err = (ours - want).abs().max() / want.abs().max()
    assert err <= 1e-5, f"relative logits error {err:.2e}"


def test_greedy_chat_replies_match_transformers(smollm2):
    path, hf, tok, chats = smollm2
    greedy = SamplingParams(temperature=0, max_tokens=32)
    outs = LLM(path, max_batch=4).generate(chats, greedy, use_tqdm=False)
    for ids, out in zip(chats, outs, strict=True):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)
        want = ref[0, len(ids) :].tolist()
        assert out.token_ids == want
        assert out.text == tok.decode(want, skip_special_tokens=True)
    assert "Paris" in outs[0].text


def test_cli_generate_streams_a_chat_reply(smollm2, capsys):
    from ssd.cli import main

    path = smollm2[0]
    args = ["generate", "--target", str(path), "--chat", "--max-tokens", "12", CHATS[0]]
    assert main(args) == 0
    assert "Paris" in capsys.readouterr().out
    assert main(["generate", "--target", str(path), "--max-tokens", "0", "hi"]) == 1
    assert "max_tokens" in capsys.readouterr().err
