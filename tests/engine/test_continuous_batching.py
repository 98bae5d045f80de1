"""Continuous batching (`add_request` / `step`): requests that join while others run, and wait
for a free row, get the tokens they get alone, greedy or seeded; no KV page leaks."""

from __future__ import annotations

import pytest

from ssd import LLM, SamplingParams

PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [200, 1], [7, 7, 7, 30, 31, 32, 90], [64], [9, 9, 100]]
PARAMS = [
    SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
    SamplingParams(temperature=1.0, seed=11, max_tokens=13, ignore_eos=True),
    SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_tokens=20, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=7, ignore_eos=True),
    SamplingParams(temperature=1.0, seed=2, max_tokens=16, ignore_eos=True),
]


@pytest.mark.parametrize(
    "options",
    [{}, {"mode": "sd", "k": 3}, {"mode": "ssd", "k": 3, "backup": "neural", "saguaro_c": 0.5}],
)
def test_requests_joining_mid_run_get_their_solo_tokens(options, checkpoints):
    target = checkpoints["llama"]
    draft = {"draft": checkpoints["llama_bias_gqa2"]} if options else {}
    llm = LLM(target, max_batch=2, page_size=4, **draft, **options)
    free = llm.runner.target.pages.num_free
    solo = [
        llm.generate(p, sp, use_tqdm=False)[0].token_ids
        for p, sp in zip(PROMPTS, PARAMS, strict=True)
    ]

    pieces: dict[int, list[int]] = {}
    final: dict[int, list[int]] = {}

    def record(outputs):
        for out in outputs:
            pieces[out.request_id] = pieces.get(out.request_id, []) + out.new_token_ids
            assert out.token_ids == pieces[out.request_id]
            if out.finish_reason is not None:
                assert out.request_id not in final, "a request finished twice"
                final[out.request_id] = out.token_ids

    ids = [llm.add_request(PROMPTS[0], PARAMS[0])]
    for _ in range(3):
        record(llm.step())
    ids += [
        llm.add_request(p, sp) for p, sp in zip(PROMPTS[1:3], PARAMS[1:3], strict=True)
    ]  # one waits
    record(llm.step())
    # a generate call meanwhile: the added requests go on, their outputs held for `step`
    [during] = llm.generate(PROMPTS[3], PARAMS[3], use_tqdm=False)
    ids.append(llm.add_request(PROMPTS[4], PARAMS[4]))
    while llm.has_unfinished():
        record(llm.step())
    record(llm.step())  # held outputs, if the last ones were made during `generate`
    assert during.token_ids == solo[3]
    assert [final[i] for i in ids] == [solo[i] for i in (0, 1, 2, 4)]
    assert llm.runner.target.pages.num_free == free


def test_a_bad_request_is_refused_when_added(checkpoints):
    llm = LLM(checkpoints["llama"], max_batch=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.add_request([1, 10_000])
    with pytest.raises(ValueError, match="empty"):
        llm.add_request([])
    assert not llm.has_unfinished()


@pytest.mark.parametrize("options", [{}, {"mode": "sd", "k": 3}])
def test_a_token_budget_spreads_admission_over_steps(options, checkpoints):
    """max_num_batched_tokens=8 over prompts of 7, 2, 7, 1 and 3 tokens: no prefill step takes
    more than 8 prompt tokens (one request alone may), and every request still gets its solo
    tokens."""
    target = checkpoints["llama"]
    draft = {"draft": checkpoints["llama_bias_gqa2"]} if options else {}
    llm = LLM(target, max_batch=4, page_size=4, max_num_batched_tokens=8, **draft, **options)
    solo = [
        llm.generate(p, sp, use_tqdm=False)[0].token_ids
        for p, sp in zip(PROMPTS, PARAMS, strict=True)
    ]
    ids = [llm.add_request(p, sp) for p, sp in zip(PROMPTS, PARAMS, strict=True)]
    prefill_batches, final = [], {}
    while llm.has_unfinished():
        admitted = [r.id for r in llm.runner.sched.waiting]
        outputs = llm.step()
        joined = [i for i in admitted if i not in {r.id for r in llm.runner.sched.waiting}]
        if joined:
            prefill_batches.append(joined)
        final.update({o.request_id: o.token_ids for o in outputs if o.finish_reason})
    sizes = [sum(len(PROMPTS[ids.index(i)]) for i in batch) for batch in prefill_batches]
    assert all(n <= 8 or len(b) == 1 for n, b in zip(sizes, prefill_batches, strict=True))
    assert len(prefill_batches) > 1
    assert [final[i] for i in ids] == solo
