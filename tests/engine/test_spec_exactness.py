"""Exactness of the whole SD / SSD pipeline at temperature > 0 (docs/design.md §3, §4 level 2).

Tiny-vocabulary models (V = 8); the empirical law of the first 3 generated tokens over many
seeds must match the exact law of the target computed by enumeration from the same model's
logits (`ssd.reference.exact_law`). Each check is a chi-square test with false-positive rate
ALPHA = 1e-6. The speculation cache is also forced to always hit (full fan-out), always miss,
and to hold wrong speculations (candidate keys shuffled).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ssd import LLM, SamplingParams, reference, testing
from ssd.models import load_model
from ssd.saguaro import Candidates
from ssd.scoring import score

V, N, K = 8, 3, 2
PROMPT = [1, 5, 2]
SAMPLES = 2000
ALPHA = 1e-6


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vocab")
    for seed, name in enumerate(("target", "draft")):
        torch.manual_seed(100 + seed)
        cfg = LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(
                    torch.randn(p.shape) * (0.6 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.1)
                    + (p.dim() == 1)
                )
        model.save_pretrained(root / name)
    return root / "target", root / "draft"


def exact_target_law(path, params, dtype=torch.float32):
    model = load_model(path, dtype=dtype)

    def logits(prefix):
        seq = PROMPT + list(prefix)
        return score(model, seq)[-1].double()

    return reference.exact_law(reference.TableModel(V, logits), (), N, params)


def sampled(llm, params):
    rows = [SamplingParams(**{**params, "seed": s}) for s in range(SAMPLES)]
    outs = llm.generate([PROMPT] * SAMPLES, rows, use_tqdm=False)
    return [tuple(o.token_ids[:N]) for o in outs]


def always_miss(drafter):
    drafter._lookup = lambda batch: ([False] * len(batch), None)


def shuffled_cache(drafter):
    build = drafter._build

    def wrong_keys(*args):
        build(*args)
        c = drafter.cache.cands
        drafter.cache.cands = Candidates(token=c.token.roll(1, dims=1), depth=c.depth)

    drafter._build = wrong_keys


FLAT = {"temperature": 1.0, "max_tokens": N, "ignore_eos": True}
FILTERED = {"temperature": 0.8, "top_k": 5, "top_p": 0.9, "max_tokens": N, "ignore_eos": True}
CASES = {
    "sd": ({"mode": "sd"}, FLAT, None),
    "sd top-k/top-p": ({"mode": "sd"}, FILTERED, None),
    "sd bf16 draft": ({"mode": "sd", "draft_dtype": "bfloat16"}, FLAT, None),
    # batches of 4: a round stops early only when all its rows doubt their token
    "sd early stop": ({"mode": "sd", "draft_stop": 0.35, "max_batch": 4}, FILTERED, None),
    "sd int8 draft": ({"mode": "sd", "draft_dtype": "int8"}, FILTERED, None),
    "sd bf16 target int8 draft": (
        {"mode": "sd", "dtype": "bfloat16", "draft_dtype": "int8"},
        FLAT,
        None,
    ),
    "ssd int8 draft C=0.5": (
        {"mode": "ssd", "backup": "neural", "saguaro_c": 0.5, "draft_dtype": "int8"},
        FLAT,
        None,
    ),
    "ssd neural C=0.2": (
        {"mode": "ssd", "backup": "neural", "saguaro_c": 0.2, "fanout": [2, 1, 2]},
        FLAT,
        None,
    ),
    "ssd fast top-k/top-p": ({"mode": "ssd", "backup": "fast"}, FILTERED, None),
    "ssd neural bf16 draft C=0.5": (
        {"mode": "ssd", "backup": "neural", "saguaro_c": 0.5, "draft_dtype": "bfloat16"},
        FILTERED,
        None,
    ),
    "ssd always hit C=0.5": (
        {"mode": "ssd", "fanout": [V] * (K + 1), "saguaro_c": 0.5},
        FLAT,
        None,
    ),
    "ssd always miss": ({"mode": "ssd", "backup": "neural"}, FILTERED, always_miss),
    # misses drafted with SD's early stop, the next caches built on the shorter speculations
    "ssd neural early stop C=0.5": (
        {"mode": "ssd", "backup": "neural", "draft_stop": 0.35, "saguaro_c": 0.5},
        FILTERED,
        None,
    ),
    "ssd auto backup, geometric fan-out C=0.5": (
        {"mode": "ssd", "backup": "auto", "fanout": "geometric", "saguaro_c": 0.5},
        FILTERED,
        None,
    ),
    "ssd adversarial fast C=0.5": (
        {"mode": "ssd", "backup": "fast", "saguaro_c": 0.5, "fanout": [3, 1, 2]},
        FLAT,
        shuffled_cache,
    ),
    # the target split over two processes (gloo), the draft in a third
    "sd tensor-parallel target": ({"mode": "sd", "tensor_parallel": 2}, FILTERED, None),
    "ssd tensor-parallel target, draft process C=0.5": (
        {"mode": "ssd", "tensor_parallel": 2, "draft_process": True, "saguaro_c": 0.5},
        FLAT,
        None,
    ),
}


@pytest.mark.timeout(300)  # the tensor-parallel cases spawn processes
@pytest.mark.parametrize("case", sorted(CASES))
def test_pipeline_law_equals_target_law(case, pair):
    options, params, patch = CASES[case]
    target, draft = pair
    dtype = getattr(torch, options.get("dtype", "float32"))  # the target's own law, in its dtype
    want = exact_target_law(target, SamplingParams(**params), dtype)
    with LLM(target, draft=draft, k=K, **{"max_batch": 256, **options}) as llm:
        if patch is not None:
            patch(llm.runner.drafter)
        testing.assert_follows(sampled(llm, params), want, ALPHA)
        m = llm.metrics
    if case.startswith("ssd always hit"):
        assert m["cache_hit_rate"] == (m["rounds"] - SAMPLES) / m["rounds"]
    if case == "ssd always miss":
        assert m["cache_hit_rate"] == 0.0
    if case.startswith("ssd adversarial"):
        assert m["cache_hit_rate"] > 0.1  # wrong speculations were really served


def test_the_pipeline_check_can_fail(pair):
    """A biased law (temperature 1 sampled, temperature 0.7 claimed) is rejected."""
    target, draft = pair
    llm = LLM(target, draft=draft, k=K, max_batch=256, mode="sd")
    want = exact_target_law(target, SamplingParams(temperature=0.7))
    with pytest.raises(AssertionError, match="do not follow"):
        testing.assert_follows(sampled(llm, FLAT), want, ALPHA)


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "sd"},
        {"mode": "ssd", "backup": "neural"},
        {"mode": "ssd", "backup": "fast", "saguaro_c": 0.5},
    ],
)
def test_seeded_tokens_do_not_depend_on_the_batch(options, pair):
    target, draft = pair
    llm = LLM(target, draft=draft, k=K, max_batch=8, **options)
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    alone = llm.generate([PROMPT], params, use_tqdm=False)[0].token_ids
    again = llm.generate([PROMPT], params, use_tqdm=False)[0].token_ids
    others = [SamplingParams(temperature=0.9, seed=s, max_tokens=5 + s) for s in range(3)]
    mixed = llm.generate(
        [[3, 3], PROMPT, [4], [6, 1, 2, 7]], [others[0], params, *others[1:]], use_tqdm=False
    )
    assert alone == again == mixed[1].token_ids
