"""Small-batch linear layers on CPU: ATen (bf16, fp32) against `ssd.kernels` (bf16, int8).

Streams forty [8960, 1536] matrices (the Qwen2.5-1.5B MLP shape; `--shape` for another) per
measurement and prints, for each row count M, GB/s of weight bytes and the median time per
matrix. Decoding lives at M = 1 (AR, draft steps) and M = K + 1 (verification), SSD's tree
steps at M = its budget.

    python benchmarks/cpu_linear.py [--threads 2] [--rows 1,2,5,8,20,64] [--shape 1536,8960]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ssd.kernels import linear, prepare
from ssd.models.quantize import quantize_rows


def median_seconds(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rows", default="1,2,5,8,20,64")
    ap.add_argument("--matrices", type=int, default=40, help="40: 1.1 GB of bf16, past the caches")
    ap.add_argument("--shape", default="8960,1536", help="N,K of each weight matrix")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    native = prepare()
    (n, k), count = map(int, args.shape.split(",")), args.matrices
    ws = [torch.randn(n, k).bfloat16() for _ in range(count)]
    ws32 = [w.float() for w in ws]
    q8 = [quantize_rows(w) for w in ws]
    print(
        f"[{n}, {k}] x {count}, {args.threads} threads, "
        f"ssd kernels {'on' if native else 'unavailable'}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"{'M':>3} {'ATen bf16':>14} {'ATen fp32':>14} {'ssd bf16':>14} {'ssd int8':>14}"
        "   (GB/s of weights, ms per matrix)"
    )
    for m in map(int, args.rows.split(",")):
        x = torch.randn(m, k).bfloat16()
        runs = {
            "aten bf16": (lambda x=x: [F.linear(x, w) for w in ws], 2 * n * k),
            "aten fp32": (lambda x=x: [F.linear(x.float(), w) for w in ws32], 4 * n * k),
            "ssd bf16": (lambda x=x: [linear(x, w) for w in ws], 2 * n * k),
            "ssd int8": (lambda x=x: [linear(x, q, None, s) for q, s in q8], n * k),
        }
        cells = []
        for fn, nbytes in runs.values():
            t = median_seconds(fn) / count
            cells.append(f"{nbytes / t / 1e9:6.1f} {t * 1e3:6.2f}")
        print(f"{m:>3} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
