"""Spec-Bench prompts, shipped with the package (``ssd/data/spec_bench.jsonl``, see
``ssd/data/SPEC_BENCH_NOTICE``): 480 questions in six tasks of 80, the MT-Bench subsets
(eight categories of ten, counted as one task here), translation, summarization, qa,
math_reasoning and rag.

    from ssd import specbench
    prompts = specbench.chat_prompts(llm.tokenizer, 12)   # 2 per task, token ids

Any JSONL file whose lines carry ``turns`` (a list of user turns) or ``prompt`` works in place
of the shipped one; a line without ``category`` counts as category "default".
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

PATH: Path = Path(__file__).resolve().parent / "data" / "spec_bench.jsonl"

# Spec-Bench's multi-turn task is MT-Bench's eight categories, ten questions each.
_MT_BENCH = frozenset(
    ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
)


def questions(path: Path | None = None) -> list[dict]:
    """The questions of a JSONL file (default: the shipped Spec-Bench), in file order, each a
    dict with question_id, category and turns (other fields kept)."""
    path = PATH if path is None else Path(path)
    out: list[dict] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object")
        if "turns" in d:
            turns = d["turns"]
        elif "prompt" in d:
            turns = [d["prompt"]]
        else:
            raise ValueError(f"{path}:{n}: no `turns` or `prompt` field")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{path}:{n}: `turns` must be a non-empty list of strings")
        q: dict[str, Any] = dict(d)
        q["question_id"] = d.get("question_id", len(out))
        q["category"] = str(d.get("category", "default"))
        q["turns"] = turns
        out.append(q)
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def _task(q: dict) -> str:
    return "mt_bench" if q["category"] in _MT_BENCH else q["category"]


def spread(items: list[dict], n: int) -> list[dict]:
    """`n` items spread evenly over the tasks (categories; MT-Bench's eight count as one), in
    the order the tasks first appear: round-robin over the tasks, taking each task's items in
    file order. Deterministic; all items if n >= len(items)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for q in items:
        groups[_task(q)].append(q)
    queues = list(groups.values())
    out: list[dict] = []
    depth = 0
    while len(out) < n and any(depth < len(g) for g in queues):
        for g in queues:
            if depth < len(g) and len(out) < n:
                out.append(g[depth])
        depth += 1
    return out


def chat_prompts(tokenizer: Any, n: int, path: Path | None = None) -> list[list[int]]:
    """Token ids of `n` prompts (`spread` over the file's tasks): each question's first turn as
    a user message, the tokenizer's chat template applied once with the generation prompt, and
    no special tokens beyond what the template writes."""
    if tokenizer is None:
        raise ValueError("chat_prompts needs a tokenizer (the checkpoint has none)")
    out: list[list[int]] = []
    for q in spread(questions(path), n):
        messages = [{"role": "user", "content": q["turns"][0]}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(list(tokenizer.encode(text, add_special_tokens=False)))
    return out
