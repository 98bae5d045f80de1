"""Prefix caching: shared prompt pages by content, reference counted, never written by a
sharer; requests with shared prefixes get the tokens they get without the cache."""

from __future__ import annotations

import random

import pytest

from helpers import hf_greedy
from ssd import LLM, SamplingParams
from ssd.engine.prefix_cache import PrefixCache


def test_pages_are_shared_by_content_and_returned():
    cache = PrefixCache(num_pages=8, page_size=4)
    a = list(range(1, 12))  # 11 tokens: pages [1..4], [5..8] full, the rest partial
    ta: list[int] = []
    assert cache.acquire(ta, a, 14) == 0 and len(ta) == 4
    cache.register(ta, a)
    tb: list[int] = []
    b = [*a[:9], 99, 98]  # the same first two pages
    assert cache.lookup(b) == ta[:2]
    assert cache.acquire(tb, b, 12) == 8 and tb[:2] == ta[:2] and set(tb[2:]).isdisjoint(ta)
    assert cache.lookup(a[:8]) == ta[:1]  # the last prompt token is always recomputed
    assert cache.num_free == 8 - 4 - 1
    shared = tb[:2]
    cache.release(ta)
    assert cache.num_free == 8 - 3  # a's two cached pages stay cached, held by b
    cache.release(tb)
    assert cache.num_free == 8 and cache.lookup(b) == shared  # idle, still cached
    tc: list[int] = []
    assert cache.acquire(tc, [7] * 30, 32) == 0  # needs every page: evicts the idle ones
    assert cache.lookup(a) == [] and cache.num_free == 0
    td: list[int] = []
    assert cache.acquire(td, [1, 2], 4) is None and td == []
    cache.release(tc)
    assert cache.num_free == 8 and (cache.hit_tokens, cache.prompt_tokens) == (8, 52)


def test_random_traffic_never_leaks_or_shares_a_written_page():
    rng = random.Random(0)
    cache = PrefixCache(num_pages=24, page_size=4)
    stems = [[rng.randrange(50) for _ in range(12)] for _ in range(3)]
    held: list[tuple[list[int], list[int]]] = []
    for _ in range(400):
        if held and (rng.random() < 0.45 or cache.num_free < 6):
            table, prompt = held.pop(rng.randrange(len(held)))
            cache.release(table)
            continue
        prompt = rng.choice(stems)[: rng.randrange(1, 13)] + [rng.randrange(50)] * rng.randrange(6)
        length = len(prompt) + rng.randrange(8)
        table: list[int] = []
        cached = cache.acquire(table, prompt, length)
        if cached is None:
            assert table == []
            continue
        assert cached < len(prompt) and cached % 4 == 0
        # pages past the cached prefix (where this request writes) belong to it alone
        others = {p for t, _ in held for p in t}
        assert others.isdisjoint(table[cached // 4 :])
        cache.register(table, prompt)
        held.append((table, prompt))
    for table, _ in held:
        cache.release(table)
    assert cache.num_free == 24


STEM = [5, 17, 99, 3, 250, 8, 41, 7, 7, 7, 30, 31, 32, 33, 34, 35, 36, 90, 64, 12, 13]
PROMPTS = [[*STEM, 1], [*STEM, 2, 3], STEM[:10], [*STEM, 1]]


@pytest.mark.parametrize(
    ("options", "page_size"),
    [
        ({}, 4),
        ({"mode": "sd", "k": 3}, 16),
        ({"mode": "ssd", "k": 3, "backup": "neural", "saguaro_c": 0.5}, 4),
    ],
)
def test_shared_prefixes_give_the_tokens_of_a_cold_cache(options, page_size, checkpoints):
    target = checkpoints["llama"]
    draft = {"draft": checkpoints["llama_bias_gqa2"]} if options else {}
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    seeded = [
        SamplingParams(temperature=1.0, seed=s, max_tokens=12, ignore_eos=True) for s in (1, 2)
    ]
    want = [hf_greedy(target, p, 12) for p in PROMPTS]
    cold = LLM(target, max_batch=2, page_size=page_size, **draft, **options)
    cold_sampled = [o.token_ids for o in cold.generate(PROMPTS[:2], seeded, use_tqdm=False)]

    llm = LLM(target, max_batch=2, page_size=page_size, prefix_caching=True, **draft, **options)
    free = llm.runner.target.pages.num_free
    together = llm.generate(PROMPTS, greedy, use_tqdm=False)  # the first pair shares nothing yet
    apart = [llm.generate(p, greedy, use_tqdm=False)[0] for p in PROMPTS]  # each after another
    sampled = [o.token_ids for o in llm.generate(PROMPTS[:2], seeded, use_tqdm=False)]
    assert [o.token_ids for o in together] == want
    assert [o.token_ids for o in apart] == want
    assert sampled == cold_sampled
    m = llm.metrics
    assert m["prefix_cache_hit_tokens"] >= (len(STEM) // page_size) * page_size * 4
    assert llm.runner.target.pages.num_free == free


@pytest.mark.parametrize(
    "options", [{"mode": "sd", "k": 3}, {"mode": "ssd", "k": 3, "backup": "neural"}]
)
def test_the_draft_shares_prompt_pages_too(options, checkpoints):
    """The draft is the target itself, so it proposes the target's tokens only if the KV it
    read from shared pages is right: acceptance stays near 1 while its cache hits."""
    target = checkpoints["llama"]
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    llm = LLM(target, draft=target, max_batch=2, page_size=4, prefix_caching=True, **options)
    pages = llm.runner.drafter.d.alloc
    free = pages.num_free
    got, acceptance = [], []
    for p in PROMPTS:  # one after another: each later one finds the stem cached
        got.append(llm.generate(p, greedy, use_tqdm=False)[0].token_ids)
        acceptance.append(llm.metrics["acceptance_rate"])
    assert got == [hf_greedy(target, p, 12) for p in PROMPTS]
    assert pages.hit_tokens >= (len(STEM) // 4) * 4 * 2  # the 2nd and 4th prompts at least
    assert min(acceptance) >= 0.95, acceptance
    assert pages.num_free == free
