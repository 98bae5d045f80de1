"""Throughput under load: many requests through continuous batching, with and without the
prefix cache, at several batch sizes.

Every request is a chat with one long system prompt shared by all of them (the case prefix
caching is for) and a Spec-Bench question of its own. For each batch size (`max_batch`) the
engine runs the same requests with `prefix_caching` off and on, alternating A B A B over the
repeats, and prints generated tokens per second of wall time (prefill included), the
median over repeats and the prefix-cache hit rate.

    python benchmarks/throughput.py [--target DIR] [--requests 32] [--batches 1,8,32]
"""

from __future__ import annotations

import argparse
import statistics
import time

from ssd import LLM, SamplingParams, specbench

SYSTEM = (
    "You are a careful assistant. Answer in plain English, briefly and precisely. When a "
    "question is ambiguous, say which reading you take. Prefer short sentences; use lists "
    "only for steps. Give numbers with their units. If you do not know, say so instead of "
    "guessing. Do not repeat the question. "
) * 3


def prompts(tokenizer, n: int) -> list[list[int]]:
    out = []
    for q in specbench.spread(specbench.questions(), n):
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": q["turns"][0][:400]},
        ]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(list(tokenizer.encode(text, add_special_tokens=False)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", help="default: the prepared SmolLM2-135M-Instruct")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    if args.target is None:
        from ssd.prepare import prepare_pair

        args.target = prepare_pair("smollm2")[0]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    print(f"{args.requests} requests x {args.max_tokens} tokens, {args.dtype}, AR")
    print(f"{'batch':>5} {'cache':>6} {'tok/s runs':>20} {'median':>8} {'hit rate':>9}")
    for batch in map(int, args.batches.split(",")):
        engines = {
            cache: LLM(
                args.target,
                dtype=args.dtype,
                max_batch=batch,
                max_model_len=1024,
                prefix_caching=cache,
            )
            for cache in (False, True)
        }
        reqs = prompts(engines[False].tokenizer, args.requests)
        runs: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for cache, llm in engines.items():
                start = time.perf_counter()
                outs = llm.generate(reqs, params, use_tqdm=False)
                seconds = time.perf_counter() - start
                runs[cache].append(sum(len(o.token_ids) for o in outs) / seconds)
        for cache, llm in engines.items():
            cells = " ".join(f"{x:6.1f}" for x in runs[cache])
            hit = llm.metrics["prefix_cache_hit_rate"]
            label = "on" if cache else "off"
            median = statistics.median(runs[cache])
            print(f"{batch:>5} {label:>6} {cells:>20} {median:>8.1f} {hit:>9.2f}")


if __name__ == "__main__":
    main()
