"""SSD's fan-out allocations replayed on the same logged rounds: the hit rate each would give.

Runs SSD (one process, the Qwen pair, K = 4) over Spec-Bench prompts with the drafter
recording every round: the draft's probability of each token it sent, its 64 likeliest outcome
tokens at each depth, and the outcome the target returned. Then, for each budget, it replays on
those rounds the best fixed fan-out (searched over every split of the budget, folded as the
engine folds it after an early stop), the ranked fan-out at fixed trusts, and the ranked
fan-out with each request's trust learned from its own earlier rounds (the engine's default),
all through the engine's own `saguaro.ranked_fanout` and `saguaro.fork`. What is
pre-speculated never changes the tokens, so one run serves every allocation; what it does not
replay is how the tree's cost grows with the budget.

    python benchmarks/fanout_replay.py [--num-prompts 6] [--budgets 4,8,12] [--temperature 0]
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch

from ssd import saguaro, specbench
from ssd.config import SamplingParams
from ssd.engine.drafters import _fold
from ssd.llm import LLM
from ssd.models.loading import load_tokenizer
from ssd.prepare import prepare_pair

K = 4


def record(args: argparse.Namespace) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target, draft = prepare_pair("qwen2.5-coder")
    prompts = specbench.chat_prompts(load_tokenizer(target), args.num_prompts, None)
    rounds: list[dict] = []
    with LLM(target, mode="ssd", draft=draft, k=K, dtype="bfloat16", draft_dtype="int8",
             max_batch=1, budget=args.live_budget, draft_stop=0.7) as llm:  # fmt: skip
        llm.runner.drafter.record = rounds
        for i, prompt in enumerate(prompts):
            params = SamplingParams(
                temperature=args.temperature, max_tokens=args.max_tokens, ignore_eos=True, seed=i
            )
            llm.generate([prompt], params, use_tqdm=False)
    return rounds


def likeliest(r: dict) -> saguaro.Likeliest:
    return saguaro.Likeliest(
        torch.tensor([r["top"]]), torch.tensor([r["prob"]]), torch.tensor([r["sent"]])
    )


def hit(r: dict, top: saguaro.Likeliest, fan: list[int], budget: int) -> bool:
    cands = saguaro.fork(top, torch.tensor([fan]), budget)
    match = (cands.depth[0] == r["accepted"]) & (cands.token[0] == r["token"])
    return bool(match.any())


def best_fixed(rounds: list[dict], tops: list, budget: int) -> tuple[float, tuple[int, ...]]:
    best: tuple[float, tuple[int, ...]] = (-1.0, ())
    for split in itertools.product(range(budget + 1), repeat=K + 1):
        if sum(split) != budget:
            continue
        n = 0
        for r, top in zip(rounds, tops, strict=True):
            sent = len(r["sent"])
            n += hit(r, top, list(split) if sent == K else _fold(split, sent), budget)
        best = max(best, (n / len(rounds), split))
    return best


def ranked(rounds: list[dict], tops: list, budget: int, trust: float | None) -> float:
    learned: dict[int, saguaro.TrustEstimator] = {}
    n = 0
    for r, top in zip(rounds, tops, strict=True):
        est = learned.setdefault(r["request"], saguaro.TrustEstimator())
        t = est.trust() if trust is None else trust
        fan = saguaro.ranked_fanout(top, budget, t)[0].tolist()
        n += hit(r, top, fan, budget)
        est.observe(r["sent"], r["accepted"])
    return n / len(rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-prompts", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--budgets", default="4,8,12")
    ap.add_argument("--live-budget", type=int, default=4, help="the recorded run's budget")
    args = ap.parse_args()
    rounds = record(args)
    tops = [likeliest(r) for r in rounds]
    live = sum(r["hit"] for r in rounds) / len(rounds)
    print(f"{len(rounds)} rounds, T = {args.temperature}; the live run (ranked, budget "
          f"{args.live_budget}) hit {live:.3f}")  # fmt: skip
    for budget in (int(b) for b in args.budgets.split(",")):
        rate, split = best_fixed(rounds, tops, budget)
        cells = [f"best fixed {list(split)} {rate:.3f}"]
        cells += [f"trust {t} {ranked(rounds, tops, budget, t):.3f}" for t in (0.25, 0.5, 1.0)]
        cells.append(f"learned {ranked(rounds, tops, budget, None):.3f}")
        print(f"budget {budget}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
