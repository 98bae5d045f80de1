"""AR generation through the public `LLM` API: token-exact against `transformers` greedy."""

from __future__ import annotations

import pytest
import torch

from helpers import CHECKPOINTS, hf_greedy, random_tokens
from ssd import LLM, SamplingParams

NEW = 64
PROMPTS = [
    [5, 17, 99, 3, 250, 8, 41],
    [200, 1],
    [7, 7, 7, 7, 30, 31, 32, 33, 34, 35, 36, 90, 91],
    [64],
]


@pytest.fixture(scope="module")
def hf_reference(checkpoints):
    return {name: [hf_greedy(path, p, NEW) for p in PROMPTS] for name, path in checkpoints.items()}


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_greedy_matches_transformers_at_batch_1_and_4(name, checkpoints, hf_reference):
    llm = LLM(checkpoints[name], max_batch=4)
    greedy = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True)
    single = [llm.generate(p, greedy, use_tqdm=False)[0].token_ids for p in PROMPTS]
    batch = [o.token_ids for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
    assert single == hf_reference[name]
    assert batch == hf_reference[name]


def test_bad_prompts_fail_only_their_own_request(checkpoints):
    llm = LLM(checkpoints["llama"], max_batch=4, max_model_len=32)
    prompts = [[1, 2, 3], [], [1, 999], list(range(40)), [4, 5]]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
    assert [o.finish_reason for o in outs] == ["length", "error", "error", "error", "length"]
    assert "empty" in outs[1].error
    assert "999" in outs[2].error and "vocabulary" in outs[2].error
    assert "context" in outs[3].error
    assert len(outs[0].token_ids) == 5 and len(outs[4].token_ids) == 5


def test_context_limit_and_stop_tokens_end_a_request(checkpoints):
    llm = LLM(checkpoints["llama"], max_batch=2, max_model_len=20)
    greedy = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    out = llm.generate([PROMPTS[0]], greedy, use_tqdm=False)[0]
    assert out.finish_reason == "length" and len(PROMPTS[0]) + len(out.token_ids) == 20
    stop = out.token_ids[4]
    first = out.token_ids.index(stop)
    params = SamplingParams(temperature=0, max_tokens=50, stop_token_ids=[stop])
    stopped = llm.generate([PROMPTS[0]], params, use_tqdm=False)[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == out.token_ids[: first + 1]


def test_seeded_sampling_is_reproducible_and_batch_independent(checkpoints):
    llm = LLM(checkpoints["qwen3_tied"], max_batch=4)
    seeded = [SamplingParams(temperature=1.0, top_p=0.9, seed=s, max_tokens=24) for s in (1, 2)]
    alone = [llm.generate(PROMPTS[i], seeded[i], use_tqdm=False)[0].token_ids for i in range(2)]
    mixed = llm.generate(PROMPTS[:3], [*seeded, SamplingParams(max_tokens=5)], use_tqdm=False)
    assert [o.token_ids for o in mixed[:2]] == alone
    assert (
        alone[0]
        != llm.generate(
            PROMPTS[0],
            SamplingParams(temperature=1.0, top_p=0.9, seed=3, max_tokens=24),
            use_tqdm=False,
        )[0].token_ids
    )


def test_compiled_gives_the_same_tokens_as_eager(checkpoints):
    path = checkpoints["llama3_scaled_gqa4_tied"]
    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.8, top_k=20, seed=4, max_tokens=12, ignore_eos=True),
    ]
    eager = LLM(path, max_batch=2, jit="eager").generate(PROMPTS[:2], params, use_tqdm=False)
    compiled = LLM(path, max_batch=2, jit="compile").generate(PROMPTS[:2], params, use_tqdm=False)
    assert [o.token_ids for o in compiled] == [o.token_ids for o in eager]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_give_the_same_tokens_as_compiled(checkpoints):
    """Replaying captured graphs runs the compiled kernels: the tokens must match exactly."""
    path = checkpoints["llama3_scaled_gqa4_tied"]
    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.8, top_k=20, seed=4, max_tokens=12, ignore_eos=True),
    ]
    outs = {
        jit: LLM(path, max_batch=2, jit=jit, device="cuda").generate(
            PROMPTS[:2], params, use_tqdm=False
        )
        for jit in ("compile", "cudagraph")
    }
    assert [o.token_ids for o in outs["cudagraph"]] == [o.token_ids for o in outs["compile"]]


def test_prompts_prefill_in_their_own_length_buckets(checkpoints):
    """Prompts of 5, 40 and 150 tokens prefill in three steps of width 16, 64 and 256, not one
    step padding all to 256, and each gets transformers' greedy tokens."""
    path = checkpoints["llama"]
    prompts = [random_tokens(n, seed=n) for n in (150, 5, 40)]
    llm = LLM(path, max_batch=4)
    widths = []
    step = llm.runner.target.step

    def spy(*args):
        widths.append(args[3].shape[-1])
        return step(*args)

    llm.runner.target.step = spy
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outs = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert sorted(w for w in widths if w > 1) == [16, 64, 256]
    assert outs == [hf_greedy(path, p, 8) for p in prompts]
