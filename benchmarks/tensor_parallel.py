"""A tensor-parallel target on CPU: TP=1 (one process, every core) against TP=2 (two gloo
ranks, a share of the cores each), AR decoding at batch 1 and 8.

On one machine the ranks share one memory bus, so TP=2 cannot stream weights faster than one
process with every core does; what it shows is the cost of the split (two all-reduces per
layer, one all-gather of the logits, the inputs broadcast each step) against the one-process
path. Each engine is built, warmed and timed in turn (a TP=2 engine pins this process to its
share of the cores while it lives), alternating A B A B over the repeats; medians.

    python benchmarks/tensor_parallel.py [--target DIR] [--batches 1,8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

from ssd import LLM, SamplingParams, specbench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", help="default: the prepared Qwen2.5-Coder-1.5B-Instruct")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    if args.target is None:
        from ssd.prepare import prepare_pair

        args.target = prepare_pair("qwen2.5-coder")[0]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    questions = [q["turns"][0][:200] for q in specbench.spread(specbench.questions(), 8)]
    print(f"AR, {args.dtype}, {args.max_tokens} new tokens per request, decode tok/s")
    print(f"{'batch':>5} {'TP':>3} {'tok/s runs':>22} {'median':>8}")
    for batch in map(int, args.batches.split(",")):
        runs: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for tp in (1, 2):
                with LLM(args.target, dtype=args.dtype, max_batch=batch, tensor_parallel=tp) as llm:
                    prompts = [llm.tokenizer.encode(q) for q in questions[:batch]]
                    llm.generate(prompts, SamplingParams(max_tokens=2), use_tqdm=False)
                    start = time.perf_counter()
                    outs = llm.generate(prompts, params, use_tqdm=False)
                    seconds = time.perf_counter() - start
                runs[tp].append(sum(len(o.token_ids) for o in outs) / seconds)
        for tp, values in runs.items():
            shown = " ".join(f"{v:.2f}" for v in values)
            print(f"{batch:>5} {tp:>3} {shown:>22} {statistics.median(values):>8.2f}")


if __name__ == "__main__":
    main()
