"""Two versions of `cpu_linear.cpp` side by side in one process, alternated: GB/s of each.

This machine's speed drifts by tens of percent within minutes, so a kernel change is judged by
alternating both builds over the same weights (A B A B …, medians and ranges), not by runs
minutes apart. Each source is built as its own extension (ops renamed), with the flags
`ssd.kernels` uses on this CPU (`build_flags`: AVX-512 where it has the instructions).

    mkdir /tmp/old && git archive HEAD~1 src/ssd/kernels | tar -x -C /tmp/old
    python benchmarks/kernel_ab.py /tmp/old/src/ssd/kernels/cpu_linear.cpp \
        src/ssd/kernels/cpu_linear.cpp \
        [--rows 1,3,5,6] [--shape 8960,1536] [--matrices 40] [--repeats 7] [--threads 2] [--int8]
        [--together]

Called from Python one matrix at a time, a kernel streams slower than in the engine, where a
forward's matrices follow each other inside one native call: `--together` passes them all in
one call (one thread, int8 [4864, 896] × 120 at one row: 10.8 GB/s one call each, 14.7 in one).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from ssd.kernels import build_flags
from ssd.models import huge_pages
from ssd.models.quantize import quantize_rows

KERNELS = Path(__file__).resolve().parents[1] / "src" / "ssd" / "kernels"


def build(source: Path, tag: str, root: Path) -> object:
    """`source` as extension `ab_<tag>`, with its op namespace and symbols renamed."""
    d = root / tag
    d.mkdir()
    rename = {"ssd_cpu": f"ssd_ab_{tag}", "ssd_kernels": f"ssd_kernels_{tag}"}

    def renamed(text: str) -> str:
        for old, new in rename.items():
            text = text.replace(old, new)
        return text

    (d / "linear.cpp").write_text(renamed(source.read_text()))
    for header in ("kernels.h", "simd.h"):  # the source's own where it has them (an old revision)
        own = source.parent / header
        (d / header).write_text(renamed((own if own.exists() else KERNELS / header).read_text()))
    load(name=f"ab_{tag}", sources=[str(d / "linear.cpp")], build_directory=str(d),
         extra_cflags=build_flags(), extra_ldflags=["-fopenmp"],
         is_python_module=False)  # fmt: skip
    return getattr(torch.ops, f"ssd_ab_{tag}").linear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rows", default="1,3,5,6")
    ap.add_argument("--shape", default="8960,1536", help="N,K of each bf16 weight matrix")
    ap.add_argument("--matrices", type=int, default=40, help="40: 1.1 GB, past the caches")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--int8", action="store_true", help="int8 weights with a scale per row")
    ap.add_argument(
        "--together",
        action="store_true",
        help="all matrices in one call (as the fused layers run them), not one call each",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fns = [build(args.a, "a", Path(tmp)), build(args.b, "b", Path(tmp))]
    torch.set_num_threads(args.threads)
    n, k = map(int, args.shape.split(","))
    ws = [torch.randn(n, k).bfloat16() for _ in range(args.matrices)]
    scales: list[torch.Tensor | None] = [None] * len(ws)
    if args.int8:
        ws, scales = (list(t) for t in zip(*map(quantize_rows, ws), strict=True))
    ws = [huge_pages.move(w) for w in ws]  # where the engine keeps its weights
    gb = ws[0].element_size() * n * k * len(ws) / 1e9
    kind = "int8" if args.int8 else "bf16"
    print(f"[{n}, {k}] x {len(ws)} {kind}, {args.threads} threads; GB/s median [min-max]")
    for m in map(int, args.rows.split(",")):
        x = torch.randn(m, k).bfloat16()
        rates: list[list[float]] = [[], []]
        for _ in range(args.repeats):
            for fn, r in zip(fns, rates, strict=True):
                start = time.perf_counter()
                if args.together:
                    fn(x, ws, scales, [None] * len(ws))
                else:
                    for w, scale in zip(ws, scales, strict=True):
                        fn(x, [w], [scale], [None])
                r.append(gb / (time.perf_counter() - start))
        a, b = (statistics.median(r) for r in rates)
        print(
            f"M={m}: A {a:5.1f} [{min(rates[0]):.1f}-{max(rates[0]):.1f}]  "
            f"B {b:5.1f} [{min(rates[1]):.1f}-{max(rates[1]):.1f}]  B/A {b / a:.2f}"
        )


if __name__ == "__main__":
    main()
