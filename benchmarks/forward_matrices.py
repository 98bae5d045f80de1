"""A forward's weight matrices alone, grouped as the fused layers call them: ms and GB/s per group.

Streams every projection of every layer (q/k/v together, o, gate/up together, down) and the
head of the prepared default pair's target or draft through `ssd_cpu::linear` with M rows of
activations, alternating the row counts, on the first core (one thread) by default: how far a
verification's (or a tree step's) matrices are from one row's, and from the bandwidth probe.
The rest of a forward (attention, norms, RoPE, host work) is what a profile adds on top.

    python benchmarks/forward_matrices.py [--model target|draft] [--rows 1,5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ssd.kernels import prepare
from ssd.models.quantize import load_at
from ssd.prepare import prepare_pair


def groups(params) -> dict[str, list[tuple[list, list]]]:
    """Per group, its calls: (matrices, scales) as one `linear` call takes them."""
    layers, n = params.layers, params.layers["wq"].shape[0]
    names = {
        "qkv": ("wq", "wk", "wv"),
        "o": ("wo",),
        "gate_up": ("w_gate", "w_up"),
        "down": ("w_down",),
    }
    out = {
        group: [
            (
                [layers[nm][i] for nm in members],
                [layers.get(nm + "_scale", [None] * n)[i] for nm in members],
            )
            for i in range(n)
        ]
        for group, members in names.items()
    }
    out["head"] = [([params.lm_head], [params.head_scale.get("lm_head")])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("target", "draft"), default="target")
    ap.add_argument("--rows", default="1,5")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prepare()
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    torch.set_num_threads(args.threads)
    target, draft = prepare_pair("qwen2.5-coder")
    model = load_at(target, "bfloat16") if args.model == "target" else load_at(draft, "int8")
    calls = groups(model.params)
    rows = [int(m) for m in args.rows.split(",")]
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.repeats):
        for m in rows:
            for name, group in calls.items():
                x = torch.randn(m, group[0][0][0].shape[1]).bfloat16()
                start = time.perf_counter()
                for ws, scales in group:
                    torch.ops.ssd_cpu.linear(x, ws, scales, [None] * len(ws))
                times.setdefault((m, name), []).append(time.perf_counter() - start)
    print(f"{args.model}, {args.threads} thread(s); per group: median ms, GB/s")
    for m in rows:
        total, cells = 0.0, []
        for name, group in calls.items():
            seconds = statistics.median(times[(m, name)])
            nbytes = sum(w.numel() * w.element_size() for ws, _ in group for w in ws)
            total += seconds
            cells.append(f"{name} {1000 * seconds:.1f} ms {nbytes / seconds / 1e9:.1f}")
        print(f"M={m}: " + ", ".join(cells) + f"; all {1000 * total:.0f} ms")


if __name__ == "__main__":
    main()
