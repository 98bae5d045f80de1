"""Greedy: AR, SD and SSD give transformers' greedy tokens, whatever the draft proposes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import hf_greedy, random_tokens
from ssd import LLM, SamplingParams
from ssd.engine.metrics import merge_all
from ssd.engine.requests import Request
from ssd.engine.spec import SpecRunner
from ssd.engine.speculation import Speculation
from ssd.engine.target import TargetModel, make_step
from ssd.jit import Step
from ssd.kv import alloc_kv_cache
from ssd.steps import verify_step

NEW = 64
PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [200, 1], [7, 7, 7, 7, 30, 31, 32, 33, 34, 35, 36, 90], [64]]
GREEDY = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True)
PAIRS = [
    ("llama", "llama_bias_gqa2"),
    ("qwen3_tied", "llama3_scaled_gqa4_tied"),
    ("qwen2", "qwen3_tied"),
]
OPTIONS = {
    "sd": {"mode": "sd", "k": 3},
    "sd_stop": {"mode": "sd", "k": 3, "draft_stop": 0.1},  # stops after 1, 2 or 3 tokens
    "ssd_neural": {"mode": "ssd", "k": 3, "backup": "neural"},
    "ssd_stop": {"mode": "ssd", "k": 3, "backup": "neural", "draft_stop": 0.3},  # short misses
    "ssd_fast_fanout": {"mode": "ssd", "k": 4, "backup": "fast", "fanout": [3, 2, 1, 1, 2]},
    "ssd_auto_saguaro": {"mode": "ssd", "k": 2, "backup": "auto", "saguaro_c": 0.5},
}
# Every option for the first two pairs (the early stops for the first only); the qwen2 target
# (its own family, q/k/v biases without an o bias) runs SD and the tree-decoding SSD only, to
# keep the suite fast.
CASES = [
    pytest.param(target, draft, OPTIONS[opt], id=f"{target}-{draft}-{opt}")
    for target, draft in PAIRS
    for opt in OPTIONS
    if target != "qwen2" or opt in ("sd", "ssd_fast_fanout")
    if opt not in ("sd_stop", "ssd_stop") or target == "llama"
]


@pytest.fixture(scope="module")
def reference(checkpoints):
    return {t: [hf_greedy(checkpoints[t], p, NEW) for p in PROMPTS] for t, _ in PAIRS}


def generate(llm, prompts):
    return [o.token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]


@pytest.mark.parametrize(("target", "draft", "options"), CASES)
def test_speculative_greedy_equals_transformers(target, draft, options, checkpoints, reference):
    llm = LLM(checkpoints[target], draft=checkpoints[draft], max_batch=4, **options)
    assert generate(llm, PROMPTS) == reference[target]  # batch of 4, mixed lengths
    assert generate(llm, PROMPTS[2]) == reference[target][2:3]  # batch of 1


@pytest.mark.parametrize("mode", ["sd", "ssd"])
def test_draft_equal_to_target_accepts_everything(mode, checkpoints):
    path = checkpoints["llama"]
    llm = LLM(path, draft=path, mode=mode, k=3, max_batch=4)
    out = generate(llm, PROMPTS)
    assert out == generate(LLM(path, max_batch=4), PROMPTS)
    m = llm.metrics
    assert m is not None and m["acceptance_rate"] == 1.0
    if mode == "ssd":  # every round after a sequence's second is a cache hit: its first
        # outcome teaches the ranked fan-out to trust this draft however flat its probabilities
        hits = round(m["cache_hit_rate"] * m["rounds"])
        assert hits >= m["rounds"] - 2 * len(PROMPTS)
        assert m["bonus_prediction_accuracy"] == m["cache_hit_rate"]


@pytest.mark.parametrize("stop", [0.0, 1.0])
def test_draft_stop_sets_how_many_tokens_a_round_drafts(stop, checkpoints):
    """A draft equal to the target accepts all it drafts: K a round with stop 0 (never stops),
    one with stop 1 (every probability is below it, the first token ends the round)."""
    path = checkpoints["llama"]
    llm = LLM(path, draft=path, mode="sd", k=3, max_batch=4, draft_stop=stop)
    assert generate(llm, PROMPTS) == generate(LLM(path, max_batch=4), PROMPTS)
    m = llm.metrics
    assert m is not None and m["acceptance_rate"] == 1.0
    at_least = m["per_position_acceptance"]  # P(accepted >= 1, 2, 3)
    if stop == 1.0:
        assert at_least[0] == 1.0 and at_least[1] == 0.0
    else:  # only a round cut short by max_tokens emits fewer than K drafts
        assert at_least[2] > 0.9


def test_ssd_cache_built_after_an_early_stop_holds_the_next_outcome(checkpoints):
    """Stop 1: a round that missed everywhere drafts one token. With the draft equal to the
    target it is accepted, and the cache built on that one-token speculation keeps a candidate
    for the bonus after it (the draft's top token), so every round after a sequence's first
    hits. Its branch starts a step late (the glue is carried: the bonus's logits come from the
    tree's first step), so each such round drafts K-1 tokens from the cache."""
    path = checkpoints["llama"]
    # 4(K+1) branches, as on a GPU: room for the bonus after every depth from the first round
    llm = LLM(path, draft=path, mode="ssd", k=3, max_batch=4, backup="neural", draft_stop=1.0,
              budget=16)  # fmt: skip
    params = dataclasses.replace(GREEDY, max_tokens=1 + 2 + 3 * 20)  # no round cut short
    out = llm.generate(PROMPTS, params, use_tqdm=False)
    ar = LLM(path, max_batch=4).generate(PROMPTS, params, use_tqdm=False)
    assert [o.token_ids for o in out] == [o.token_ids for o in ar]
    m = llm.metrics
    assert m is not None and m["acceptance_rate"] == 1.0
    assert m["cache_hit_rate"] == (m["rounds"] - len(PROMPTS)) / m["rounds"]
    # each sequence's first round drafted one token, every later round K-1 from the cache
    drafted = len(PROMPTS) + 2 * (m["rounds"] - len(PROMPTS))
    assert m["drafted_per_round"] * m["rounds"] == pytest.approx(drafted)


def test_draft_stop_is_refused_without_draft_passes_or_outside_0_1(checkpoints):
    path = checkpoints["llama"]
    for bad in (
        {"mode": "ar", "draft_stop": 0.5},
        {"mode": "ssd", "backup": "fast", "draft_stop": 0.5},
        {"mode": "sd", "draft_stop": 1.5},
    ):
        with pytest.raises(ValueError, match="draft_stop"):
            LLM(path, draft=path, **bad)


@dataclasses.dataclass
class OracleDrafter:
    """Proposes the target's own greedy continuation with position `corrupt` changed, as a
    point mass: every round must accept exactly `corrupt` tokens (K when corrupt == K)."""

    k: int
    corrupt: int
    truth: dict[tuple[int, ...], list[int]]
    vocab: int
    busy_seconds: float = 0.0

    def admit(self, reqs):
        pass

    def release(self, req):
        pass

    def observe(self, batch, accepted, token, seconds):
        pass

    def speculate(self, batch: list[Request]) -> Speculation:
        rows = []
        for r in batch:
            cont = self.truth[tuple(r.prompt)]
            row = (cont + [0] * (self.k + 1))[len(r.out) : len(r.out) + self.k]
            if self.corrupt < self.k:
                row[self.corrupt] = (row[self.corrupt] + 1) % self.vocab
            rows.append(row)
        tokens = torch.tensor(rows + [[0] * self.k] * (4 - len(rows)))
        return Speculation(tokens, None, torch.ones(4, dtype=torch.bool), [None] * len(batch))


@pytest.mark.parametrize("mode", ["sd", "ssd"])
def test_each_output_carries_its_rounds(mode, checkpoints):
    """Per-request acceptance adds up to the call's metrics; a round cut short by max_tokens
    counts only the drafts it emitted (docs/design.md §5)."""
    path, k = checkpoints["llama"], 3
    llm = LLM(path, draft=path, mode=mode, k=k, max_batch=4)
    params = dataclasses.replace(GREEDY, max_tokens=23)  # 1 from the prefill + 22 from rounds
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for o in outs:
        assert o.acceptance is not None and o.acceptance.committed == 22
        assert o.acceptance.rate == 1.0  # a draft equal to the target: even the cut round
        if mode == "sd":  # 5 rounds of K + 1 tokens, then one cut after 2 of its drafts
            assert o.acceptance.hist == [0, 0, 1, 5]
    total = merge_all([o.acceptance for o in outs if o.acceptance], k)
    m = llm.metrics
    assert m is not None
    assert (total.rounds, total.rate) == (m["rounds"], m["acceptance_rate"])
    assert total.per_position() == m["per_position_acceptance"]
    assert LLM(path).generate(PROMPTS[:1], params, use_tqdm=False)[0].acceptance is None


@pytest.mark.parametrize("corrupt", [0, 1, 2, 3])
def test_oracle_drafter_forces_every_accepted_length(corrupt, checkpoints, reference):
    path, k = checkpoints["llama"], 3
    llm = LLM(path, max_batch=4)
    truth = {tuple(p): ref for p, ref in zip(PROMPTS, reference["llama"], strict=True)}
    drafter = OracleDrafter(k, corrupt, truth, llm.model.cfg.vocab_size)
    kv = alloc_kv_cache(llm.model.cfg, 64, 16)
    verify = Step(verify_step, "eager")
    target = TargetModel(llm.model, kv, make_step("eager"), 4, llm.max_len, lookahead=k + 1)
    runner = SpecRunner(target, verify, drafter)
    llm.runner = runner  # a research drafter plugged into the same request loop
    params = dataclasses.replace(GREEDY, max_tokens=61)  # 60 = whole rounds of 1, 2, 3 or 4
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [ref[:61] for ref in reference["llama"]]
    m = runner.metrics.summary()
    assert m["acceptance_rate"] == corrupt / k
    per_position = m["per_position_acceptance"]
    assert per_position == [1.0 if i < corrupt else 0.0 for i in range(k)]


@pytest.mark.parametrize("mode", ["sd", "ssd"])
def test_draft_prefills_prompts_of_different_length_buckets(mode, checkpoints):
    """Target and draft prefill each length bucket in its own step; a draft equal to the target
    still accepts everything, so each bucket's draft KV is right."""
    path = checkpoints["llama"]
    prompts = [random_tokens(n, seed=n) for n in (150, 5, 40)]
    llm = LLM(path, draft=path, mode=mode, k=3, max_batch=4)
    assert generate(llm, prompts) == generate(LLM(path, max_batch=4), prompts)
    assert llm.metrics is not None and llm.metrics["acceptance_rate"] == 1.0


@pytest.mark.parametrize("mode", ["sd", "ssd"])
def test_a_bf16_draft_next_to_an_fp32_target_keeps_the_target_tokens(mode, checkpoints, reference):
    """The draft only proposes: its precision changes acceptance, never the tokens."""
    target, draft = PAIRS[0]
    llm = LLM(
        checkpoints[target],
        draft=checkpoints[draft],
        mode=mode,
        k=3,
        max_batch=4,
        draft_dtype="bfloat16",
    )
    assert llm.runner.drafter.d.model.params.embed.dtype == torch.bfloat16
    assert llm.model.params.embed.dtype == torch.float32
    assert generate(llm, PROMPTS) == reference[target]
