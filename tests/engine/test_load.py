"""A load test, bounded in size: a few hundred short requests with random prompts, lengths and
sampling parameters, some of them invalid, arriving while others run, on a cache too small
for all of them (requests are preempted and recomputed). Every valid request finishes with the
tokens it gets alone, every invalid one is refused with its reason, and the pages all come
back, in the target's cache and the draft's."""

from __future__ import annotations

import random

import pytest

from ssd import LLM, SamplingParams

V = 256  # the tiny checkpoints' vocabulary


def _traffic(rng: random.Random, n: int) -> list[tuple[list[int], SamplingParams | None]]:
    stems = [[rng.randrange(V) for _ in range(12)] for _ in range(4)]
    out: list[tuple[list[int], SamplingParams | None]] = []
    for _ in range(n):
        prompt = rng.choice(stems)[: rng.randrange(1, 13)] + [
            rng.randrange(V) for _ in range(rng.randrange(4))
        ]
        kind = rng.random()
        if kind < 0.05:
            prompt = []  # refused: empty
        elif kind < 0.10:
            prompt = [*prompt, V + 7]  # refused: outside the vocabulary
        elif kind < 0.13:
            prompt = prompt * 40  # refused: longer than the context
        if rng.random() < 0.5:
            params = SamplingParams(temperature=0, max_tokens=rng.randrange(1, 9), ignore_eos=True)
        else:
            params = SamplingParams(
                temperature=rng.choice([0.7, 1.0]),
                top_p=rng.choice([0.9, 1.0]),
                seed=rng.randrange(1000),
                max_tokens=rng.randrange(1, 9),
                ignore_eos=True,
            )
        out.append((prompt, params))
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("options", [{}, {"mode": "sd", "k": 3}])
def test_hundreds_of_requests_arriving_over_time(options, checkpoints):
    target = checkpoints["llama"]
    draft = {"draft": checkpoints["llama_bias_gqa2"]} if options else {}
    rng = random.Random(7)
    traffic = _traffic(rng, 300)
    engine = dict(max_batch=8, page_size=4, max_model_len=128, **draft, **options)
    llm = LLM(target, prefix_caching=True, num_pages=36, **engine)
    free = llm.runner.target.pages.num_free
    draft_pages = llm.runner.drafter.d.alloc if options else None
    draft_free = draft_pages.num_free if draft_pages else None
    ids: dict[int, int] = {}  # request id -> index in traffic
    refused: dict[int, str] = {}
    final: dict[int, list[int]] = {}
    pending = list(enumerate(traffic))
    while pending or llm.has_unfinished():
        for _ in range(rng.randrange(0, 12)):  # a burst of arrivals between steps
            if not pending:
                break
            i, (prompt, params) = pending.pop(0)
            try:
                ids[llm.add_request(prompt, params)] = i
            except ValueError as e:
                refused[i] = str(e)
        for out in llm.step():
            if out.finish_reason is not None:
                final[ids[out.request_id]] = out.token_ids
    bad = {i for i, (p, _) in enumerate(traffic) if not p or max(p) >= V or len(p) >= 128}
    assert set(refused) == bad and len(bad) > 10
    assert set(final) == set(range(len(traffic))) - bad
    assert llm.runner.target.pages.num_free == free  # no page leaked
    assert draft_pages is None or draft_pages.num_free == draft_free
    assert llm.metrics["preemptions"] > 0
    # each valid request's tokens equal its run alone, on a fresh engine without the cache
    alone = LLM(target, **engine)
    for i in sorted(final):
        prompt, params = traffic[i]
        assert final[i] == alone.generate(prompt, params, use_tqdm=False)[0].token_ids, i
