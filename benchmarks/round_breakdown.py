"""Where an SD round's time goes: the draft step and the verification step, timed apart.

Runs SD on the prepared default pair (or --target/--draft) over Spec-Bench prompts at batch 1
and prints per-call milliseconds of the draft step (K draft forwards) and of the verification
step (one target forward over K+1 tokens), with acceptance and τ. The rest of a round is host
work (bookkeeping, sampling tensors, metadata).

    python benchmarks/round_breakdown.py [--k 4] [--draft-dtype int8] [--temperature 0]
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from ssd import LLM, SamplingParams, specbench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target")
    ap.add_argument("--draft")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--draft-dtype", default="int8")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.target is None:
        from ssd.prepare import DEFAULT_PAIR, prepare_pair

        args.target, args.draft = prepare_pair(DEFAULT_PAIR)
    llm = LLM(args.target, draft=args.draft, mode="sd", k=args.k, dtype="bfloat16",
              draft_dtype=args.draft_dtype, max_batch=1, max_model_len=2048)  # fmt: skip
    prompts = specbench.chat_prompts(llm.tokenizer, args.prompts)
    seconds: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()

    def timed(obj: object, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        def wrapper(*a: object) -> object:
            start = time.perf_counter()
            out = fn(*a)
            seconds[name] += time.perf_counter() - start
            calls[name] += 1
            return out

        setattr(obj, attr, wrapper)

    timed(llm.runner, "verify", "verify step")
    timed(llm.runner.drafter.d, "_draft", "draft step")
    warm = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    llm.generate([prompts[0]], warm, use_tqdm=False)
    seconds.clear()
    calls.clear()
    params = SamplingParams(
        temperature=args.temperature, max_tokens=args.max_tokens, ignore_eos=True, seed=0
    )
    start = time.perf_counter()
    for p in prompts:
        llm.generate([p], params, use_tqdm=False)
    total = time.perf_counter() - start
    m = llm.metrics or {}
    print(
        f"K={args.k}, draft {args.draft_dtype}, T={args.temperature}, {args.threads} threads: "
        f"{len(prompts) * args.max_tokens / total:.2f} tok/s including prefill, "
        f"acceptance {m.get('acceptance_rate'):.3f}, tau {m.get('mean_accepted_length'):.3f}"
    )
    for name in seconds:
        print(f"  {name}: {1e3 * seconds[name] / calls[name]:.1f} ms x {calls[name]} calls")


if __name__ == "__main__":
    main()
