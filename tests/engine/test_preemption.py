"""Preemption by recompute: with too few KV pages for every running request's whole run, the
requests admitted last give their pages back and are recomputed later, and still produce
exactly their own tokens (greedy: transformers'; seeded: those of a cache large enough never to
preempt), in AR, SD and SSD, with the draft in this process or its own, and with a two-rank
target; no page leaks."""

from __future__ import annotations

import pytest

from helpers import hf_greedy, random_tokens
from ssd import LLM, SamplingParams

PROMPTS = [random_tokens(n, seed=n) for n in (7, 12, 3, 9)]
TOKENS = 40
# Each request fits alone (at most 12 + 40 + 5 slots: 15 pages of 4) but not all four at once.
TIGHT = {"page_size": 4, "num_pages": 24, "max_batch": 4}

MODES = [
    {"mode": "ar"},
    {"mode": "ar", "prefix_caching": True},
    {"mode": "sd", "k": 4},
    {"mode": "ssd", "k": 4, "backup": "neural"},
    {"mode": "ssd", "k": 3, "backup": "neural", "draft_process": True},
    {"mode": "sd", "k": 4, "tensor_parallel": 2, "prefix_caching": True},
]


def _engine(target, draft, options, **sizes):
    use_draft = None if options["mode"] == "ar" else draft
    return LLM(target, draft=use_draft, **options, **sizes)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("options", MODES)
def test_preempted_requests_keep_their_greedy_tokens(options, checkpoints):
    target, draft = checkpoints["qwen2"], checkpoints["llama"]
    greedy = SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)
    with _engine(target, draft, options, **TIGHT) as llm:
        got = [o.token_ids for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
        preemptions = llm.metrics["preemptions"]
        pages = llm.runner.target.pages
        free = pages.num_free
    assert preemptions > 0
    assert got == [hf_greedy(target, p, TOKENS) for p in PROMPTS]
    assert free == TIGHT["num_pages"]  # no page leaked


@pytest.mark.timeout(300)
@pytest.mark.parametrize("options", [MODES[0], MODES[2], MODES[3]])
def test_seeded_tokens_do_not_depend_on_preemption(options, checkpoints):
    target, draft = checkpoints["qwen2"], checkpoints["llama"]
    params = [
        SamplingParams(temperature=1.0, top_p=0.9, seed=s, max_tokens=TOKENS, ignore_eos=True)
        for s in range(len(PROMPTS))
    ]
    with _engine(target, draft, options, **TIGHT) as tight:
        squeezed = [o.token_ids for o in tight.generate(PROMPTS, params, use_tqdm=False)]
        assert tight.metrics["preemptions"] > 0
    with _engine(target, draft, options, page_size=4, max_batch=4) as roomy:
        free = [o.token_ids for o in roomy.generate(PROMPTS, params, use_tqdm=False)]
        assert roomy.metrics["preemptions"] == 0
    assert squeezed == free
