"""SSD's round on this CPU if no weight byte ever came from memory: the arithmetic's floor.

SSD's ceiling in `ssd bench` assumes its cores wait only for memory. On a CPU where a core's
arithmetic at five rows is slower than its share of the bus, the round cannot get there. This
measures, on one thread (SSD's target and draft each have one core of two), the rate of the
kernels with their weights already in cache (one matrix that fits L3, called over and over) and
from memory, for the rows each side feeds: the target verifies K+1 rows (bf16), the draft's
K tree steps feed `budget` rows (int8; the glue is carried), and each missed round drafts K
tokens one row at a time before verification can start. From a bench JSON's τ, hit rate and
bytes:

    round = max(target bytes / rate(bf16, K+1),
                K draft bytes / rate(int8, budget) + (1 - hits) K draft bytes / rate(int8, 1))

and SSD's tok/s at that round (τ per round) against the bandwidth ceiling the bench printed.

    python benchmarks/ssd_floor.py docs/img/bench-qwen-avx2-q7-t0.json [--budget 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ssd.kernels import linear, prepare
from ssd.models.quantize import quantize_rows


def workload(m: int, int8: bool, cached: bool) -> tuple[Callable[[], object], int]:
    """A call of `ssd.kernels.linear` over a set of weight matrices at m rows, and its bytes."""
    # one matrix called over and over stays in the outer caches (6.3 MB bf16, 4.4 MB int8: big
    # enough that the per-call work is a few percent); distinct ones come from memory
    shape = (4864, 896) if int8 else (2048, 1536)  # int8: the draft's MLP shape
    count = 32 if cached else (64 if int8 else 80)

    def matrix() -> tuple[torch.Tensor, torch.Tensor | None]:
        w = torch.randn(*shape)
        return quantize_rows(w) if int8 else (w.bfloat16(), None)

    ws = [matrix()] * count if cached else [matrix() for _ in range(count)]
    x = torch.randn(m, shape[1]).bfloat16()
    return (lambda: [linear(x, q, None, scale) for q, scale in ws]), sum(
        q.numel() * q.element_size() for q, _ in ws
    )


def rates(cases: list[tuple[int, bool, bool]], repeats: int) -> dict[tuple, list[float]]:
    """GB/s of each case over `repeats` rounds, the cases alternated within each round (this
    machine's speed drifts; noise only ever slows a run down, so the best is the floor's)."""
    runs = {case: workload(*case) for case in cases}
    out: dict[tuple, list[float]] = {case: [] for case in cases}
    for i in range(repeats + 1):
        for case, (fn, nbytes) in runs.items():
            start = time.perf_counter()
            fn()
            if i:  # the first round warms up
                out[case].append(nbytes / (time.perf_counter() - start) / 1e9)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench_json", type=Path, help="an `ssd bench` JSON with an SSD row")
    ap.add_argument("--budget", type=int, help="SSD's tree rows (default K + 1, as ssd bench)")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    d = json.loads(args.bench_json.read_text())
    k, ssd = d["k"], d["modes"]["ssd"]
    m = ssd["metrics"]
    tau, hits, budget = m["mean_accepted_length"], m["cache_hit_rate"], args.budget or k + 1
    prepare()
    torch.set_num_threads(1)
    rows = {"bf16": k + 1, "int8": budget}
    cases = [(r, kind == "int8", cached) for cached in (True, False) for kind, r in rows.items()]
    cases.append((1, True, False))
    got = rates(cases, args.repeats)
    best = {case: max(r) for case, r in got.items()}
    print(f"one thread, GB/s of weights, best [median] of {args.repeats}: in cache, from memory")
    for kind, r in [*rows.items(), ("int8", 1)]:
        cells = [
            f"{max(got[c]):6.1f} [{statistics.median(got[c]):4.1f}]"
            for c in ((r, kind == "int8", True), (r, kind == "int8", False))
            if c in got
        ]
        print(f"  {kind} at {r} rows  " + "   ".join(cells))
    bt, bd = d["target_bytes"], d["draft_bytes"]
    ceiling = ssd["ceiling_tok_s"]
    print(
        f"tau {tau:.2f}, hit rate {hits:.2f}, K {k}, budget {budget}; "
        f"SSD measured {ssd['median']:.2f} tok/s, ceiling {ceiling:.2f}"
    )
    for cached, label in ((True, "weights in cache (floor)"), (False, "weights from memory")):
        # the best rates: what each side can do alone, at its best moment
        target = bt / 1e9 / best[k + 1, False, cached]
        draft = k * bd / 1e9 / best[budget, True, cached]
        miss = (1 - hits) * k * bd / 1e9 / best[1, True, False]
        tok_s = tau / max(target, draft + miss)
        print(
            f"  {label}: target {target:.3f} s, draft {draft:.3f} + misses {miss:.3f} s a round"
            f" -> {tok_s:.2f} tok/s, {100 * tok_s / ceiling:.0f}% of the ceiling"
        )


if __name__ == "__main__":
    main()
