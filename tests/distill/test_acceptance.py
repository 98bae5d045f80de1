"""The evaluator's figures against a direct count of the procedure on a toy pair."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import randomize
from ssd.engine.metrics import AcceptanceStats
from ssd_tools.distill.draft import init_draft
from ssd_tools.distill.evaluate import evaluate_pair, speculate, token_agreement

EOS = 2
PROMPTS = [[5, 17, 33], [9, 4, 60, 61, 62, 7, 7, 30], [40, 41], [88, 3, 12, 70, 71, 72]]
MAX_NEW = 24


@pytest.fixture(scope="module")
def toy_draft(tiny_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The target's layers with the last two perturbed: agrees often, not always."""
    target = LlamaForCausalLM.from_pretrained(tiny_target)
    draft = init_draft(target, [0, 1, 2, 3])
    noisy = LlamaForCausalLM(draft.config)
    randomize(noisy, 7, scale=0.5)
    with torch.no_grad():
        for i in (2, 3):
            for p, n in zip(
                draft.model.layers[i].parameters(), noisy.model.layers[i].parameters(), strict=True
            ):
                p.add_(n if p.dim() > 1 else 0)
    path = tmp_path_factory.mktemp("toy") / "draft"
    draft.save_pretrained(path)
    return path


def _argmax_next(model: LlamaForCausalLM, seq: list[int]) -> int:
    with torch.no_grad():
        return int(model(torch.tensor([seq])).logits[0, -1].argmax())


def direct_count(
    target: LlamaForCausalLM, draft: LlamaForCausalLM, prompt: list[int], k: int
) -> tuple[AcceptanceStats, list[int]]:
    """Greedy SD, literally, with full recomputation and no KV cache: the target's prefill
    gives the first token, then each round drafts K tokens and keeps the leading run that
    matches the target's greedy continuation, plus one token of the target's."""
    cont: list[int] = []
    while len(cont) < MAX_NEW and (not cont or cont[-1] != EOS):
        cont.append(_argmax_next(target, prompt + cont))
    stats, pos = AcceptanceStats(k), 1
    while pos < len(cont):
        drafted: list[int] = []
        for _ in range(k):
            drafted.append(_argmax_next(draft, prompt + cont[:pos] + drafted))
        a = 0
        while a < k and pos + a < len(cont) and drafted[a] == cont[pos + a]:
            a += 1
        c = min(a + 1, len(cont) - pos)
        stats.add_round(a, c)
        pos += c
    return stats, cont


@pytest.mark.parametrize("k", [2, 4])
def test_greedy_engine_equals_direct_count(tiny_target: Path, toy_draft: Path, k: int) -> None:
    hf_t = LlamaForCausalLM.from_pretrained(tiny_target).eval()
    hf_d = LlamaForCausalLM.from_pretrained(toy_draft).eval()
    got, outs = speculate(tiny_target, toy_draft, PROMPTS, k, 0.0, MAX_NEW, batch=3)
    total = AcceptanceStats(k)
    for prompt, s, out in zip(PROMPTS, got, outs, strict=True):
        want, cont = direct_count(hf_t, hf_d, prompt, k)
        assert out == cont
        assert (s.hist, s.committed) == (want.hist, want.committed)
        total = total.merge(want)
    assert 0.1 < total.rate < 0.9, "the toy pair should accept some drafts, not all"


def test_evaluate_pair_counts_every_k(tiny_target: Path, toy_draft: Path) -> None:
    hf_t = LlamaForCausalLM.from_pretrained(tiny_target).eval()
    hf_d = LlamaForCausalLM.from_pretrained(toy_draft).eval()
    cats = ["a", "b", "a", "b"]
    res = evaluate_pair(
        tiny_target,
        toy_draft,
        PROMPTS,
        cats,
        [2, 3, 5],
        [0.0],
        MAX_NEW,
        batch=4,
        progress=False,
    )["T=0"]
    assert res["check"]["engine"] == res["check"]["counted"]
    assert res["check"]["same_tokens"] == len(PROMPTS)
    for k in (2, 3, 5):
        direct = [direct_count(hf_t, hf_d, p, k)[0] for p in PROMPTS]
        want_a = direct[0].merge(direct[2])
        got = res[f"K={k}"]
        assert got["a"].hist == want_a.hist and got["a"].committed == want_a.committed
        overall = want_a.merge(direct[1]).merge(direct[3])
        assert got["overall"].rate == pytest.approx(overall.rate)
        assert got["overall"].tau == pytest.approx(overall.tau)


def test_sampled_self_draft_accepts_everything(tiny_target: Path) -> None:
    got, outs = speculate(tiny_target, tiny_target, PROMPTS, 3, 1.0, MAX_NEW, batch=2)
    for s, out in zip(got, outs, strict=True):
        assert sum(s.hist[:-1]) <= 1  # only a round cut short by EOS / the limit
        assert s.committed == len(out) - 1  # the first token comes from the prefill


def test_sampled_result_does_not_depend_on_batch(tiny_target: Path, toy_draft: Path) -> None:
    def run(batch: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
        stats, outs = speculate(
            tiny_target, toy_draft, PROMPTS, 3, 1.0, MAX_NEW, batch=batch, seed=seed
        )
        return [s.hist for s in stats], outs

    a = run(1, 3)
    assert run(4, 3) == a
    assert run(4, 4)[1] != a[1]


def test_token_agreement_by_hand() -> None:
    # answer tokens after the first: 5 (lookup guesses 8), 6 (lookup: 6 followed 5 before),
    # 7 (lookup: 7 followed 5, 6), 9 (lookup: 8 followed 5, 6, 7); the draft gets 5 and 7
    got = token_agreement(["a"], [[5, 6, 7]], [[8, 5, 6, 7, 9]], [[True, True, False, True, False]])
    want = {"draft": 2 / 4, "lookup": 2 / 4, "either": 3 / 4, "tokens": 4}
    assert got == {"a": want, "overall": want}
