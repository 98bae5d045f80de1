"""What one memory bus gives SSD's two sides at once: each side's kernels alone, then together.

While the target verifies, SSD's draft decodes its tree on the other core, and both stream
weights over the same bus. This runs the engine's own kernels as the two sides feed them,
each in a process pinned to one core with one thread: the target's bf16 products at K+1 rows
(40 matrices [8960, 1536], 1.1 GB) on the first core and the draft's int8 ones at the tree's
rows (120 matrices [4864, 896], 0.5 GB) on the last, each called over and over for a window,
first alone and then both at once (alternated). It prints each side's GB/s and their sum:
the sum together is the rate an SSD round's overlap can reach, against the two-core probe
`ssd bench` prints.

    python benchmarks/ssd_overlap.py [--target-rows 5] [--draft-rows 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch

from ssd import kernels
from ssd.models import huge_pages
from ssd.models.quantize import quantize_rows


def side(
    core: int, kind: str, rows: int, plan: list[str], bar: Any, out: Any, window: float
) -> None:
    """Run this side's products on `core` for `window` seconds at each step of `plan` where
    it takes part ("alone-<kind>" or "both"), meeting the other side at `bar` each step."""
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    assert kernels.prepare(), "the engine's CPU kernels did not build on this machine"
    if kind == "target":
        ws = [torch.randn(8960, 1536).bfloat16() for _ in range(40)]
        scales: list[torch.Tensor | None] = [None] * len(ws)
    else:
        ws, scales = (
            list(t)
            for t in zip(
                *map(quantize_rows, [torch.randn(4864, 896).bfloat16() for _ in range(120)]),
                strict=True,
            )
        )
    ws = [huge_pages.move(w) for w in ws]
    gb = sum(w.numel() * w.element_size() for w in ws) / 1e9
    x = torch.randn(rows, ws[0].shape[1]).bfloat16()
    call = lambda: torch.ops.ssd_cpu.linear(x, ws, scales, [None] * len(ws))  # noqa: E731
    call()
    rates: dict[str, list[float]] = {}
    for step in plan:
        bar.wait()
        if step not in ("both", f"alone-{kind}"):
            continue
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < window:
            call()
            n += 1
        rates.setdefault(step, []).append(n * gb / (time.perf_counter() - start))
    out.put((kind, rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-rows", type=int, default=5, help="K+1")
    ap.add_argument("--draft-rows", type=int, default=5, help="the tree's first step: budget + 1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=float, default=1.5, help="seconds a measurement")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs two cores: one per side")
    plan = ["alone-target", "alone-draft", "both"] * args.rounds
    ctx = mp.get_context("spawn")
    bar, out = ctx.Barrier(2), ctx.Queue()
    sides = [("target", cores[0], args.target_rows), ("draft", cores[-1], args.draft_rows)]
    procs = [
        ctx.Process(target=side, args=(core, kind, rows, plan, bar, out, args.window))
        for kind, core, rows in sides
    ]
    for p in procs:
        p.start()
    rates = dict(out.get() for _ in procs)
    for p in procs:
        p.join()

    def med(kind: str, step: str) -> float:
        return statistics.median(rates[kind][step])

    print(
        f"GB/s, medians of {args.rounds} (one thread a side; target {args.target_rows} rows "
        f"bf16 on core {cores[0]}, draft {args.draft_rows} rows int8 on core {cores[-1]})"
    )
    alone = med("target", "alone-target"), med("draft", "alone-draft")
    print(f"alone:    target {alone[0]:5.1f}  draft {alone[1]:5.1f}")
    both = med("target", "both"), med("draft", "both")
    print(f"together: target {both[0]:5.1f}  draft {both[1]:5.1f}  sum {sum(both):5.1f}")


if __name__ == "__main__":
    main()
