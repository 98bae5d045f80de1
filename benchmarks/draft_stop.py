"""SD's early stop (`LLM(draft_stop=)`): decode tok/s per Spec-Bench prompt for several stops.

One SD engine per stop, all in this process; every prompt runs on each engine in turn (A B C
A B C …), decode timed from the first generated token. Prompts of 400 tokens or more are left
out (their prefill takes a minute here and adds nothing to the comparison).

    python benchmarks/draft_stop.py [--stops 0,0.5,0.7] [--k 4] [--num-prompts 6] [--temperature 0]

With --replay, it instead drafts K per round with the draft's probability of each token
recorded, and replays stopping rules against a cost per draft pass and per verification of
k + 1 rows (--costs, ms): the prediction the measured sweep checks.
"""

from __future__ import annotations

import argparse

import ssd.engine.draft_model as draft_model
from ssd import LLM, SamplingParams, specbench
from ssd.bench import decode_seconds
from ssd.prepare import DEFAULT_PAIR, prepare_pair
from ssd.steps import draft_step


def engine(target: str, draft: str, k: int, stop: float | None) -> LLM:
    return LLM(target, draft=draft, mode="sd", k=k, dtype="bfloat16", draft_dtype="int8",
               max_batch=1, max_model_len=2048, draft_stop=stop)  # fmt: skip


def sweep(args: argparse.Namespace, target: str, draft: str) -> None:
    stops = [float(s) for s in args.stops.split(",")]
    llms = {s: engine(target, draft, args.k, s) for s in stops}
    prompts = specbench.chat_prompts(llms[stops[0]].tokenizer, args.num_prompts)
    prompts = [p for p in prompts if len(p) < 400]
    params = SamplingParams(temperature=args.temperature, max_tokens=128, ignore_eos=True, seed=0)
    for llm in llms.values():
        llm.generate([prompts[0]], SamplingParams(max_tokens=4), use_tqdm=False)
    seconds = dict.fromkeys(stops, 0.0)
    for i, p in enumerate(prompts):
        row = []
        for s, llm in llms.items():
            t = decode_seconds(llm, p, params)
            seconds[s] += t
            m = llm.metrics or {}
            row.append(f"stop {s}: {127 / t:5.2f} tok/s, tau {m['mean_accepted_length']:.2f}")
        print(f"prompt {i} ({len(p)} tokens): " + " | ".join(row), flush=True)
    n = 127 * len(prompts)
    print("all: " + " | ".join(f"stop {s}: {n / t:.2f} tok/s" for s, t in seconds.items()))


def replay(args: argparse.Namespace, target: str, draft: str) -> None:
    conf: list[list[float]] = []

    def recording_draft_step(*a: object, **kw: object) -> object:
        out = draft_step(*a, **kw)  # type: ignore[arg-type]
        conf.append(out[3][0].tolist())
        return out

    draft_model.draft_step = recording_draft_step  # type: ignore[assignment]
    k = 6
    llm = engine(target, draft, k, None)
    accepted: list[int] = []
    verify = llm.runner._verify

    def recording_verify(batch: object, spec: object) -> object:
        out = verify(batch, spec)  # type: ignore[arg-type]
        accepted.append(out[0][0])
        return out

    llm.runner._verify = recording_verify  # type: ignore[method-assign]
    params = SamplingParams(temperature=args.temperature, max_tokens=128, ignore_eos=True, seed=0)
    for p in specbench.chat_prompts(llm.tokenizer, args.num_prompts):
        llm.generate([p], params, use_tqdm=False)
    t_pass, *verify_ms = (float(c) for c in args.costs.split(","))

    def rate(stop: float, cap: int) -> tuple[float, float]:
        tokens = ms = 0.0
        for c, a in zip(conf, accepted, strict=True):
            n = next((i + 1 for i in range(cap) if c[i] < stop), cap)
            tokens += min(a, n) + 1
            ms += n * t_pass + verify_ms[n]
        return 1000 * tokens / ms, tokens / len(conf)

    print(f"{len(conf)} rounds recorded at K = {k}")
    for cap in range(2, k + 1):
        print(f"K = {cap}: " + "  ".join(
            f"stop {s}: {rate(s, cap)[0]:.2f} tok/s (tau {rate(s, cap)[1]:.2f})"
            for s in (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
        ))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stops", default="0,0.5,0.7")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--replay", action="store_true")
    ap.add_argument(
        "--costs",
        default="27,116,148,177,197,217,262,312",
        help="ms of a draft pass, then of a verification of 1, 2, ... 7 rows",
    )
    args = ap.parse_args()
    target, draft = prepare_pair(DEFAULT_PAIR)
    (replay if args.replay else sweep)(args, target, draft)


if __name__ == "__main__":
    main()
