"""A forward's weight matrices alone, grouped as the fused layers call them: ms and GB/s per group.

Streams every projection of every layer (q/k/v together, o, gate/up together, down) and the
head of the prepared default pair's target or draft through `ssd_cpu::linear` with M rows of
activations, alternating the row counts, on the first core (one thread) by default: how far a
verification's (or a tree step's) matrices are from one row's, and from the bandwidth probe.
The rest of a forward (attention, norms, RoPE, host work) is what a profile adds on top;
`--forward` also times the whole forward (one sequence, M new tokens after `--context` cached
ones, logits at every new token, as a tree step computes them) beside its matrices called
together, all of one input width in one call as the fused layers do (called one group at a
time from Python, each call streams its weights slower).

    python benchmarks/forward_matrices.py [--model target|draft] [--rows 1,5] [--threads 1]
        [--forward] [--context 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ssd.kernels import prepare
from ssd.kv import alloc_kv_cache, step_meta
from ssd.models.decoder import forward_unchecked
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
    ap.add_argument("--forward", action="store_true", help="the whole forward too")
    ap.add_argument("--context", type=int, default=100, help="cached tokens before the rows")
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
    if args.forward:
        whole_forward(model, rows, args)


def whole_forward(model, rows: list[int], args: argparse.Namespace) -> None:
    """The forward at each row count against its matrices in one call per input width."""
    p, cfg = model.params, model.cfg
    page = 16
    pages = -(-(args.context + max(rows)) // page)
    kv = alloc_kv_cache(cfg, pages, page, torch.bfloat16)
    by_width: dict[int, list[tuple[list, list]]] = {}
    for group in groups(p).values():
        for ws, scales in group:
            for w, s in zip(ws, scales, strict=True):
                by_width.setdefault(w.shape[1], []).append(([w], [s]))
    nbytes = sum(w[0].numel() * w[0].element_size() for g in by_width.values() for w, _ in g)
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.repeats):
        for m in rows:
            meta = step_meta([list(range(pages))], [args.context], [m], page)
            tokens = torch.randint(0, cfg.vocab_size, (1, m))
            start = time.perf_counter()
            forward_unchecked(p, cfg, kv, tokens, meta, logits_at=torch.arange(m)[None])
            times.setdefault((m, "forward"), []).append(time.perf_counter() - start)
            start = time.perf_counter()
            for width, calls in by_width.items():
                x = torch.randn(m, width).bfloat16()
                ws = [w for c, _ in calls for w in c]
                scales = [s for _, c in calls for s in c]
                torch.ops.ssd_cpu.linear(x, ws, scales, [None] * len(ws))
            times.setdefault((m, "matrices"), []).append(time.perf_counter() - start)
    print(f"whole forward after {args.context} tokens: median ms [range], matrices' GB/s")
    for m in rows:
        cells = []
        for what in ("forward", "matrices"):
            t = times[(m, what)]
            cells.append(f"{what} {1000 * statistics.median(t):.1f} [{1000 * min(t):.1f}-"
                         f"{1000 * max(t):.1f}]")  # fmt: skip
        rate = nbytes / statistics.median(times[(m, "matrices")]) / 1e9
        print(f"M={m}: " + ", ".join(cells) + f", {rate:.1f} GB/s")


if __name__ == "__main__":
    main()
