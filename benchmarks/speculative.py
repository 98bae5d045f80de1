"""AR vs SD vs SSD on the same prompts, interleaved (AR SD SSD AR SD SSD ...).

Batch 1, greedy by default. Prints per mode: decode tok/s (median and spread over repeats;
prefill excluded: T(M tokens) - T(1 token)), the ratios to AR and to SD measured side by side,
and the speculation metrics of docs/design.md §5. SSD runs its draft in a second process (its
own CPU core or device): it uses one device more than AR and SD, so tok/s per device is printed too.

    python benchmarks/speculative.py --draft PATH [--target PATH] [--prompts 8] [--k 4]
        [--draft-dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from ar_decode import prompts_for, sync

from ssd import LLM, SamplingParams


def timed(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> tuple[float, dict]:
    sync()
    start = time.perf_counter()
    metrics: dict = {}
    for p in prompts:
        llm.generate([p], params, use_tqdm=False)
        for key, value in (llm.metrics or {}).items():
            if isinstance(value, int | float):
                metrics.setdefault(key, []).append(value)
    sync()
    return time.perf_counter() - start, {k: statistics.mean(v) for k, v in metrics.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", help="target checkpoint (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--draft", required=True, help="draft checkpoint sharing the vocabulary")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jit", default=None)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--backup", default="neural")
    ap.add_argument("--saguaro-c", type=float, default=1.0)
    ap.add_argument(
        "--draft-dtypes",
        default=None,
        help="comma-separated draft dtypes, each timed as its own SD; SSD uses the first "
        "(default: the target's)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.target:
        target = Path(args.target)
    else:
        from ssd.prepare import prepare_smollm2

        target = prepare_smollm2()
    common = dict(device=args.device, jit=args.jit, max_batch=1, max_model_len=2048)
    dtypes = args.draft_dtypes.split(",") if args.draft_dtypes else [None]
    engines = {"AR": LLM(target, **common)}
    for i, dt in enumerate(dtypes):
        spec = dict(draft=args.draft, draft_dtype=dt, k=args.k, **common)
        tag = f" {dt}" if len(dtypes) > 1 else ""
        engines["SD" + tag] = LLM(target, mode="sd", **spec)
        if i == 0:  # one draft process per run (it owns this process's process group)
            engines["SSD" + tag] = LLM(
                target,
                mode="ssd",
                backup=args.backup,
                saguaro_c=args.saguaro_c,
                draft_process=True,
                **spec,
            )
    prompts = prompts_for(engines["AR"], args.prompts)
    m = args.max_tokens
    full = SamplingParams(temperature=args.temperature, max_tokens=m, ignore_eos=True, seed=0)
    one = SamplingParams(temperature=args.temperature, max_tokens=1, ignore_eos=True, seed=0)
    for llm in engines.values():  # warm up (compile, capture, first touches)
        timed(llm, prompts[:1], SamplingParams(temperature=0, max_tokens=8))
    speed: dict[str, list[float]] = {name: [] for name in engines}
    metrics: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, llm in engines.items():
            t_full, metrics[name] = timed(llm, prompts, full)
            t_one, _ = timed(llm, prompts, one)
            speed[name].append((m - 1) * len(prompts) / (t_full - t_one))
    for llm in engines.values():
        llm.close()
    ar, sd = speed["AR"], speed[list(engines)[1]]  # the first draft dtype's SD
    print(
        f"batch 1, {len(prompts)} Spec-Bench prompts x {m} tokens, T={args.temperature}, "
        f"K={args.k}, {args.device}, repeats={args.repeats}"
    )
    print(f"{'mode':<14}{'tok/s':>8}{'spread':>8}{'xAR':>6}{'xSD':>6}{'tok/s/dev':>10}  metrics")
    for name, s in speed.items():
        x_ar = statistics.median(a / b for a, b in zip(s, ar, strict=True))
        x_sd = statistics.median(a / b for a, b in zip(s, sd, strict=True))
        devices = 2 if name.startswith("SSD") else 1
        mt = metrics.get(name, {})
        keys = ("acceptance_rate", "mean_accepted_length", "cache_hit_rate", "draft_idle_fraction")
        shown = "  ".join(f"{k}={mt[k]:.3f}" for k in keys if k in mt)
        med = statistics.median(s)
        print(
            f"{name:<14}{med:>8.1f}{max(s) - min(s):>8.1f}{x_ar:>6.2f}{x_sd:>6.2f}"
            f"{med / devices:>10.1f}  {shown}"
        )


if __name__ == "__main__":
    main()
