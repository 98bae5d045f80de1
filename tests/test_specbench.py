"""The Spec-Bench questions shipped inside the package (`ssd.specbench`)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ssd import specbench
from ssd.prepare import SMOLLM2, cache_root, is_complete

MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem")
TASKS = ("translation", "summarization", "qa", "math_reasoning", "rag")


def test_the_shipped_file_has_480_questions_in_six_tasks_of_80():
    assert specbench.PATH.is_file()
    assert specbench.PATH.parent.joinpath("SPEC_BENCH_NOTICE").is_file()
    qs = specbench.questions()
    assert len(qs) == 480
    assert all(q.keys() >= {"question_id", "category", "turns"} for q in qs)
    assert all(isinstance(q["turns"][0], str) and q["turns"][0] for q in qs)
    counts = Counter(q["category"] for q in qs)
    mt_bench = [c for c in counts if c not in TASKS]
    assert set(mt_bench) == {*MT_BENCH, "humanities"}
    assert sum(counts[c] for c in mt_bench) == 80
    assert all(counts[c] == 80 for c in TASKS)
    assert len({q["question_id"] for q in qs}) == 480


def test_spread_is_deterministic_and_round_robin_over_tasks():
    qs = specbench.questions()
    picked = specbench.spread(qs, 14)
    assert picked == specbench.spread(specbench.questions(), 14)
    cats = [q["category"] for q in picked]
    # MT-Bench first (file order), then the five other tasks, twice, then two more
    assert cats[:6] == ["writing", *TASKS] and cats[6:12] == cats[:6]
    assert cats[12:] == ["writing", "translation"]
    first_of = {c: next(q for q in qs if q["category"] == c) for c in TASKS}
    assert all(first_of[c] in picked for c in TASKS)
    assert specbench.spread(qs, 0) == []
    assert len(specbench.spread(qs, 1000)) == 480
    six = specbench.spread(qs, 6)
    assert len({q["category"] for q in six}) == 6


def test_questions_reads_a_prompt_file(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "a", "category": "x"}, {"turns": ["b", "c"]}, {"prompt": "d"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    qs = specbench.questions(path)
    assert [q["turns"] for q in qs] == [["a"], ["b", "c"], ["d"]]
    assert [q["category"] for q in qs] == ["x", "default", "default"]
    assert [q["turns"][0] for q in specbench.spread(qs, 2)] == ["a", "b"]
    path.write_text('{"text": "no turns"}\n')
    with pytest.raises(ValueError, match="turns"):
        specbench.questions(path)


def test_chat_prompts_apply_the_template_once(tmp_path):
    model = cache_root() / SMOLLM2
    if not is_complete(model):
        pytest.skip(f"SmolLM2 is not prepared in {model} (`ssd prepare smollm2`)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    prompts = specbench.chat_prompts(tok, 6)
    assert len(prompts) == 6 and all(isinstance(t, int) for p in prompts for t in p)
    for q, ids in zip(specbench.spread(specbench.questions(), 6), prompts, strict=True):
        text = tok.decode(ids)
        assert text.count(q["turns"][0]) == 1
        want = tok.apply_chat_template(
            [{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True, tokenize=False
        )
        assert ids == tok.encode(want, add_special_tokens=False)
        assert text.count("<|im_start|>assistant") == 1 and text.endswith("assistant\n")
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hello there"}) + "\n")
    (one,) = specbench.chat_prompts(tok, 3, path)
    assert "Hello there" in tok.decode(one)
    with pytest.raises(ValueError, match="tokenizer"):
        specbench.chat_prompts(None, 1)
