"""Attention micro-benchmark: gathered pages + SDPA (the current `ssd.attention`) vs FlexAttention.

One layer of SmolLM2-135M attention (9 query heads, 3 KV heads, head_dim 64) over a paged KV cache
(page_size 16, pages handed out in a shuffled order, as after allocator churn), for contexts 256 /
1024 / 4096, batch 1 / 8 and four kinds of step, with metadata from the engine's own builders:

    decode   Q=1                    step_meta(starts=ctx, lens=1)
    verify4  Q=5  (K=4 drafts)      step_meta(starts=ctx, lens=5)
    verify8  Q=9  (K=8 drafts)      step_meta(starts=ctx, lens=9)
    tree20   Q=20 branches/sequence tree_meta(prefix=ctx, glue K+1=5, depths 0..4, step 1)

Variants, timed per call of one layer's attention. The per-forward setup (mask / block mask) is
timed apart: the model builds it once per forward and shares it across its 30 layers, so the
"fastest/fwd" column compares setup + 30 calls.

    sdpa     `ssd.attention.paged_attention`, eager: gather pages -> [B, S, H_kv, D], SDPA with
             the boolean mask of `attention_mask` (setup = `attention_mask`).
    sdpa_c   the same function under torch.compile.
    flex_g   compiled FlexAttention over the same gathered view; BlockMask with 128-slot KV
             blocks classified from the same boolean mask (empty blocks skipped, full blocks skip
             the mask_mod, partial ones read the boolean mask).
    flex_p   compiled FlexAttention directly over the pages, no gather: K/V are the layer's pages
             seen as one [1, H_kv, (P+1)*16, D] sequence broadcast over the batch; the BlockMask
             has 16-slot KV blocks = pages, its kv_indices are the block tables (physical pages),
             and the mask_mod maps a physical slot to its logical one through a [B, P+1]
             physical->logical page table before reading the boolean mask.

Both flex variants fold the 3 query heads of a KV head into the query rows (see `_pack`;
`--flex-gqa enable` uses flex's enable_gqa instead). Each alternative is checked against eager
`sdpa` (max abs diff over all rows) before it is timed; a failure is reported, not fatal.
Timing: the variants of a case are measured interleaved (A B C D A B C D ...), each sample a
calibrated batch of calls; the table gives the median per call and the spread (max-min)/median.
CPU: 1 thread by default and the calling thread's CPU time (the host is shared). CUDA: CUDA
events; each sample replays a CUDA graph of the calls (the engine's decode runs under CUDA
graphs), so launch overhead is excluded; `--no-graph` times back-to-back launches instead.
Compilation: one static graph per shape on CPU; on CUDA the varying dims are marked dynamic so
a few graphs serve the grid (a variant that fails that way is recompiled static, marked "s").

    .venv/bin/python benchmarks/attention.py --quick          # CPU subset, < 1 min
    .venv/bin/python benchmarks/attention.py                  # CPU grid: ~4 min CPU cold
    python3 benchmarks/attention.py --device cuda             # GPU (bf16), ~2 min
"""

from __future__ import annotations

import os

# Before torch starts its OpenMP pool: with spinning waits, eager ATen's OpenMP threads and the
# ones of inductor's compiled CPU kernels steal the (shared, few) cores from each other between
# calls, which made interleaved timings swing 10-100x. Passive waits: stable, comparable times.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import inspect
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

try:
    from ssd.attention import attention_mask, gather_pages, paged_attention
    from ssd.kv import AttentionMeta, PageAllocator, step_meta, tree_meta
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ssd.attention import attention_mask, gather_pages, paged_attention
    from ssd.kv import AttentionMeta, PageAllocator, step_meta, tree_meta

H, H_KV, D = 9, 3, 64  # SmolLM2-135M attention
PAGE = 16
LAYERS = 30  # SmolLM2-135M: setup is paid once per forward, the call once per layer
GLUE = 5  # tree: K+1 glue tokens (K=4)
TREE_STEPS = 4  # tree: scratch covers this many lock-step steps; we time step 1
KV_BLOCK_GATHERED = 128
Q_BLOCK = 128
KINDS = {"decode": 1, "verify4": 5, "verify8": 9, "tree20": 20}
VARIANTS = ("sdpa", "sdpa_c", "flex_g", "flex_p")
SETUP_OF = {"sdpa": "mask", "sdpa_c": "mask", "flex_g": "bm_g", "flex_p": "bm_p"}  # per forward
SETUP_KEYS = ("mask", "bm_g", "bm_p")


@dataclass(frozen=True)
class Case:
    batch: int
    ctx: int
    kind: str

    @property
    def q_len(self) -> int:
        return KINDS[self.kind]

    def __str__(self) -> str:
        return f"B={self.batch} ctx={self.ctx} {self.kind}"


# ---------------------------------------------------------------------------------------------
# Inputs: a realistic paged cache and the engine's own metadata builders.


def build_case(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, ctx, q = case.batch, case.ctx, case.q_len
    tree = case.kind.startswith("tree")
    need = ctx + GLUE + TREE_STEPS * q if tree else ctx + q
    pages_per_seq = math.ceil(need / PAGE)
    num_pages = b * pages_per_seq + 8
    order = torch.randperm(num_pages, generator=g).tolist()  # shuffled: pages are not contiguous
    alloc = PageAllocator(num_pages, PAGE, order=order)
    tables = [alloc.ensure([], need) for _ in range(b)]
    if tree:
        depths = [sorted(i % GLUE for i in range(q)) for _ in range(b)]
        meta = tree_meta(
            tables, [ctx] * b, depths, 1, [ctx + GLUE] * b, PAGE, q_len=q, device=device
        )
    else:
        meta = step_meta(tables, [ctx] * b, [q] * b, PAGE, q_len=q, device=device)
    shape = (num_pages + 1, PAGE, H_KV, D)
    k_pages = torch.randn(shape, generator=g).to(device, dtype)
    v_pages = torch.randn(shape, generator=g).to(device, dtype)
    query = torch.randn(b, q, H, D, generator=g).to(device, dtype)
    return query, k_pages, v_pages, meta


# ---------------------------------------------------------------------------------------------
# FlexAttention: block masks built once per forward from the engine's boolean mask.


# GQA: by default the G = H / H_kv query heads that share a KV head are folded into the query
# rows, so FlexAttention sees H_kv heads of G*Q rows (row g*Q + i is query i of head kv*G + g)
# and reads each K/V block once per KV head instead of once per query head. It also gives flex
# a GQA ratio of 1, a power of two, which on CUDA lets short queries use its split-KV decoding
# kernel. `--flex-gqa enable` uses flex's own `enable_gqa=True` instead.


def _pack(q: Tensor) -> Tensor:
    """``[B, Q, H, D]`` -> ``[B, H_kv, G*Q, D]``."""
    b, ql, h, d = q.shape
    return q.transpose(1, 2).reshape(b, H_KV, (h // H_KV) * ql, d)


def _unpack(out: Tensor, q_len: int) -> Tensor:
    """``[B, H_kv, G*Q, D]`` -> ``[B, Q, H, D]``."""
    b, hkv, gq, d = out.shape
    return out.reshape(b, hkv * (gq // q_len), q_len, d).transpose(1, 2)


def _dense_mask_mod(allowed: Tensor):
    """mask_mod reading the boolean mask ``[B, Q, S]`` of the gathered (logical) view; query
    row r is query r % Q (rows of folded GQA heads repeat the Q queries)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[b, q_idx % allowed.shape[1], kv_idx]

    return mask_mod


def _paged_mask_mod(allowed: Tensor, phys_to_logical: Tensor):
    """mask_mod over physical slots: page -> logical page of sequence b -> boolean mask."""

    def mask_mod(b, h, q_idx, kv_idx):
        logical_page = phys_to_logical[b, kv_idx // PAGE]
        slot = logical_page * PAGE + kv_idx % PAGE
        visible = allowed[b, q_idx % allowed.shape[1], slot.clamp(min=0)]
        return (logical_page >= 0) & visible

    return mask_mod


def _rows(allowed: Tensor, pack: bool) -> Tensor:
    """The mask of the query rows flex sees (only needed when they span several q-blocks)."""
    g = H // H_KV if pack else 1
    return allowed.repeat(1, g, 1) if g * allowed.shape[1] > Q_BLOCK else allowed


def _block_classes(allowed: Tensor, q_block: int, kv_block: int) -> tuple[Tensor, Tensor]:
    """Per (b, q-block, kv-block): (partial, full) booleans ``[B, nq, nk]``."""
    b, q, s = allowed.shape
    nq, nk = -(-q // q_block), -(-s // kv_block)
    if nk * kv_block != s:
        allowed = F.pad(allowed, (0, nk * kv_block - s), value=False)
    if nq == 1:  # Q fits one q-block (decode, verify, tree): no padding of the rows
        anyb = allowed.view(b, 1, q, nk, kv_block).any(4).any(2)
        allb = allowed.view(b, 1, q, nk, kv_block).all(4).all(2)
    else:
        pad_q = nq * q_block - q
        anyv = F.pad(allowed, (0, 0, 0, pad_q), value=False)
        allv = F.pad(allowed, (0, 0, 0, pad_q), value=True)
        anyb = anyv.view(b, nq, q_block, nk, kv_block).any(4).any(2)
        allb = allv.view(b, nq, q_block, nk, kv_block).all(4).all(2)
    return anyb & ~allb, allb


def _indices(
    sel: Tensor, ids: Tensor | None = None, width: int | None = None
) -> tuple[Tensor, Tensor]:
    """Selected kv blocks ``[B, nq, nk]`` -> (num ``[B, 1, nq]``, indices ``[B, 1, nq, W]``).

    `ids` maps logical block -> physical page; `width` (>= nk) pads the index rows, since
    FlexAttention wants ``W * kv_block >= KV length`` (all pages of the layer for `flex_p`).
    """
    num = sel.sum(-1, dtype=torch.int32)
    order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True)  # selected first
    if ids is not None:
        order = torch.gather(ids[:, None, :].expand(-1, sel.shape[1], -1), 2, order)
    if width is not None and width > order.shape[-1]:
        order = F.pad(order, (0, width - order.shape[-1]))
    return num[:, None], order.to(torch.int32)[:, None]


_FROM_KV_BLOCKS_ARGS = inspect.signature(BlockMask.from_kv_blocks).parameters


def _block_mask(*args, **kwargs) -> BlockMask:
    """`BlockMask.from_kv_blocks`, dropping keywords an older torch does not know."""
    kwargs = {k: v for k, v in kwargs.items() if k in _FROM_KV_BLOCKS_ARGS}
    return BlockMask.from_kv_blocks(*args, **kwargs)


def flex_gathered_setup(meta: AttentionMeta, pack: bool = True) -> BlockMask:
    """Block mask over the gathered view, 128-slot KV blocks."""
    allowed = attention_mask(meta, PAGE)[:, 0]
    _, q, s = allowed.shape
    partial, full = _block_classes(_rows(allowed, pack), Q_BLOCK, KV_BLOCK_GATHERED)
    kv_num, kv_idx = _indices(partial)
    full_num, full_idx = _indices(full)
    return _block_mask(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=(Q_BLOCK, KV_BLOCK_GATHERED),
        mask_mod=_dense_mask_mod(allowed),
        seq_lengths=((H // H_KV if pack else 1) * q, s),
        compute_q_blocks=False,
    )


def flex_paged_setup(meta: AttentionMeta, num_slots: int, pack: bool = True) -> BlockMask:
    """Block mask over the physical pages: KV blocks = pages, kv_indices = block tables;
    `num_slots` = (P + 1) * PAGE, the layer's whole cache seen as one sequence."""
    allowed = attention_mask(meta, PAGE)[:, 0]
    b, q, _ = allowed.shape
    tables = meta.block_tables
    sink = num_slots // PAGE - 1
    phys = torch.where(tables >= 0, tables, sink)
    partial, full = _block_classes(_rows(allowed, pack), Q_BLOCK, PAGE)
    kv_num, kv_idx = _indices(partial, phys, sink + 1)
    full_num, full_idx = _indices(full, phys, sink + 1)
    logical = torch.arange(tables.shape[1], device=tables.device).expand_as(tables)
    p2l = torch.full((b, sink + 1), -1, dtype=torch.int64, device=tables.device)
    p2l.scatter_(1, phys, torch.where(tables >= 0, logical, -1))
    return _block_mask(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=(Q_BLOCK, PAGE),
        mask_mod=_paged_mask_mod(allowed, p2l),
        seq_lengths=((H // H_KV if pack else 1) * q, num_slots),
        compute_q_blocks=False,
    )


def _flex(q: Tensor, k: Tensor, v: Tensor, bm: BlockMask, scale: float, pack: bool, kopts):
    """q ``[B, Q, H, D]``, k/v ``[B or 1, H_kv, S, D]`` -> ``[B, Q, H, D]``."""
    if pack:
        out = flex_attention(_pack(q), k, v, block_mask=bm, scale=scale, kernel_options=kopts)
        return _unpack(out, q.shape[1])
    out = flex_attention(
        q.transpose(1, 2), k, v, block_mask=bm, scale=scale, enable_gqa=True, kernel_options=kopts
    )
    return out.transpose(1, 2)


def flex_gathered(
    q: Tensor,
    k_pages: Tensor,
    v_pages: Tensor,
    block_tables: Tensor,
    bm: BlockMask,
    scale: float,
    pack: bool = True,
) -> Tensor:
    k = gather_pages(k_pages, block_tables).transpose(1, 2)
    v = gather_pages(v_pages, block_tables).transpose(1, 2)
    return _flex(q, k, v, bm, scale, pack, None)


def flex_paged(
    q: Tensor, k_pages: Tensor, v_pages: Tensor, bm: BlockMask, scale: float, pack=True, kopts=None
) -> Tensor:
    k = k_pages.flatten(0, 1)[None].transpose(1, 2)  # [1, H_kv, (P+1)*PAGE, D], a view
    v = v_pages.flatten(0, 1)[None].transpose(1, 2)
    return _flex(q, k, v, bm, scale, pack, kopts)


# ---------------------------------------------------------------------------------------------
# Timing.


class Timer:
    """Per-call time of `fn()`: calibrated batches, CUDA events (+ optional CUDA graph) on GPU."""

    def __init__(self, fn: Callable[[], object], device: torch.device, target_s: float, graph):
        self.fn, self.device, self.cuda = fn, device, device.type == "cuda"
        self.clock = cpu_clock()
        self.mode = "thread-cpu" if self.clock is time.thread_time else "wall"
        for _ in range(3):
            fn()
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        one = max(time.perf_counter() - t0, 1e-6)
        self.n = max(1, min(1000, int(target_s / one)))
        self.graph = None
        if self.cuda:
            self.mode = "events"
            if graph:
                self.graph = self._capture()
                self.mode = "graph" if self.graph is not None else "events*"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _capture(self):
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.fn()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._sync()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(self.n):
                    self.fn()
            g.replay()
            self._sync()
            return g
        except Exception as exc:  # keep going with plain launches
            warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc})", stacklevel=2)
            self._sync()
            return None

    def sample(self) -> float:
        if not self.cuda:
            t0 = self.clock()
            for _ in range(self.n):
                self.fn()
            return (self.clock() - t0) / self.n
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if self.graph is not None:
            self.graph.replay()
        else:
            for _ in range(self.n):
                self.fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / self.n


def cpu_clock() -> Callable[[], float]:
    """With one intra-op thread all the work runs on the calling thread, so its CPU time is the
    cost of the call without the time other jobs on a shared host hold the core; else wall."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def time_setup(fn: Callable[[], object], device: torch.device, reps: int = 20) -> float:
    """Median time of a per-forward setup (eager; host side included; wall on CUDA)."""
    clock = time.perf_counter if device.type == "cuda" else cpu_clock()
    fn()
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(clock() - t0)
    return statistics.median(out)


# ---------------------------------------------------------------------------------------------


class Compiled:
    """The three compiled variants. Shapes: "static" = one graph per shape (as the engine's
    buckets); "dynamic" = varying dims marked dynamic, so a handful of graphs and kernels serve
    the grid (cuts compile time on GPU). A variant that fails to compile dynamically is retried
    statically, and its time is marked with "s"."""

    def __init__(self, shapes: str):
        self.fns_eager = {"sdpa_c": paged_attention, "flex_g": flex_gathered, "flex_p": flex_paged}
        self.shapes = shapes
        dyn = None if shapes == "dynamic" else False
        self.fns = {
            k: torch.compile(f, fullgraph=True, dynamic=dyn) for k, f in self.fns_eager.items()
        }
        self.static: dict[str, Callable] = {}

    def static_fn(self, name: str) -> Callable:
        if name not in self.static:
            self.static[name] = torch.compile(self.fns_eager[name], fullgraph=True, dynamic=False)
        return self.static[name]


def _mark_dynamic(*dims: tuple[Tensor, Iterable[int]]) -> None:
    for t, ds in dims:
        for d in ds:
            torch._dynamo.maybe_mark_dynamic(t, d)


def run_case(case: Case, args, compiled: Compiled, device: torch.device, dtype) -> dict:
    q, kp, vp, meta = build_case(case, device, dtype)
    scale = D**-0.5
    num_slots = kp.shape[0] * PAGE
    kopts = {"BLOCK_N": PAGE} if device.type == "cuda" else None  # GPU: BLOCK_N | KV block (16)
    mask = attention_mask(meta, PAGE)
    pack = args.flex_gqa == "pack"
    setups: dict[str, Callable[[], object]] = {
        "mask": lambda: attention_mask(meta, PAGE),
        "bm_g": lambda: flex_gathered_setup(meta, pack),
        "bm_p": lambda: flex_paged_setup(meta, num_slots, pack),
    }
    row: dict = {"case": case, "t": {}, "spread": {}, "diff": {}, "err": {}, "mode": ""}
    row["static"], row["first"], row["setup"] = set(), {}, {}
    built = {}
    for key in ("bm_g", "bm_p"):
        try:
            built[key] = setups[key]()
        except Exception as exc:  # its variant is reported as failed, the run goes on
            row["err"][key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
    bm_g, bm_p = built.get("bm_g"), built.get("bm_p")
    bt = meta.block_tables
    if compiled.shapes == "dynamic":  # query length, pages, table width, slots (batch static)
        _mark_dynamic((q, (1,)), (kp, (0,)), (vp, (0,)), (bt, (1,)), (mask, (2, 3)))
        for bm in built.values():
            closure = [c.cell_contents for c in bm.mask_mod.__closure__ or ()]
            tensors = [bm.kv_indices, bm.full_kv_indices, *closure]
            _mark_dynamic(*((t, range(1, t.dim())) for t in tensors if isinstance(t, Tensor)))
    calls = {
        "sdpa_c": lambda f: lambda: f(q, kp, vp, bt, mask, scale),
        "flex_g": lambda f: lambda: f(q, kp, vp, bt, bm_g, scale, pack),
        "flex_p": lambda f: lambda: f(q, kp, vp, bm_p, scale, pack, kopts),
    }
    fns = {"sdpa": lambda: paged_attention(q, kp, vp, bt, mask, scale)}
    fns.update({k: c(compiled.fns[k]) for k, c in calls.items()})
    tol = 1e-4 if dtype == torch.float32 else 5e-2  # outputs are O(1)
    with torch.no_grad():
        ref = fns["sdpa"]().float()
        timers = {}
        for name in args.variants:
            if SETUP_OF[name] in row["err"]:
                continue
            for attempt in ("as set", "static"):
                try:
                    t0 = time.perf_counter()
                    out = fns[name]()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    row["first"][name] = time.perf_counter() - t0
                    row["err"].pop(name, None)
                    break
                except Exception as exc:
                    row["err"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
                    if name == "sdpa" or compiled.shapes == "static" or attempt == "static":
                        break
                    fns[name] = calls[name](compiled.static_fn(name))
                    row["static"].add(name)
            if name in row["err"]:
                continue
            diff = (out.float() - ref).abs().max().item()
            row["diff"][name] = diff
            if not diff <= tol:  # also catches NaN; still timed, but flagged
                row["err"][name] = f"MISMATCH vs sdpa: max abs diff {diff:.2e} > {tol}"
            try:
                timers[name] = Timer(fns[name], device, args.sample_s, args.graph)
                row["mode"] = timers[name].mode
            except Exception as exc:
                row["err"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        samples: dict[str, list[float]] = {n: [] for n in timers}
        for _ in range(args.repeats):  # interleaved: A B C D A B C D ...
            for name, timer in timers.items():
                samples[name].append(timer.sample())
        for name, xs in samples.items():
            med = statistics.median(xs)
            row["t"][name] = med
            row["spread"][name] = (max(xs) - min(xs)) / med
        for key, setup in setups.items():
            if key not in row["err"]:
                row["setup"][key] = time_setup(setup, device)
    return row


def per_forward(r: dict) -> dict[str, float]:
    """Estimated attention time of one forward: its setup once + one call per layer."""
    return {v: r["setup"].get(SETUP_OF[v], 0.0) + LAYERS * t for v, t in r["t"].items()}


def fmt_us(x: float) -> str:
    if math.isnan(x):
        return "-"
    us = x * 1e6
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def print_table(rows: list[dict], variants: tuple[str, ...]) -> None:
    head = f"{'B':>2} {'ctx':>5} {'kind':<8}"
    head += "".join(f" {v:>8} {'spr':>4}" for v in variants)
    head += f" {'mask':>6} {'bm_g':>6} {'bm_p':>6} {'diff_g':>7} {'diff_p':>7}  fastest/fwd"
    print(head)
    for r in rows:
        c: Case = r["case"]
        line = f"{c.batch:>2} {c.ctx:>5} {c.kind:<8}"
        for v in variants:
            if v in r["t"]:
                mark = "s" if v in r["static"] else ""
                line += f" {fmt_us(r['t'][v]) + mark:>8} {r['spread'][v] * 100:>3.0f}%"
            else:
                line += f" {'ERR':>8} {'':>4}"
        line += "".join(f" {fmt_us(r['setup'].get(k, math.nan)):>6}" for k in SETUP_KEYS)
        for v in ("flex_g", "flex_p"):
            d = r["diff"].get(v)
            line += f" {'-' if d is None else f'{d:.0e}':>7}"
        tot = per_forward(r)
        if tot:
            best = min(tot, key=tot.get)
            line += f"  {best} {tot.get('sdpa', math.nan) / tot[best]:.2f}x"
        print(line)
        for v, e in r["err"].items():
            print(f"   ! {v} {c}: {e}")


def _geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else math.nan


def summary(rows: list[dict], variants: tuple[str, ...], device: str) -> str:
    """One line: geomean speedup of each variant over eager sdpa (per call), overall and by
    kind, and the kinds each variant wins on per-forward (setup + LAYERS calls)."""
    alts = [v for v in variants if v != "sdpa"]
    ratio = {
        v: [r["t"]["sdpa"] / r["t"][v] for r in rows if {v, "sdpa"} <= r["t"].keys()] for v in alts
    }
    overall = ", ".join(f"{v} {_geomean(x):.2f}x" if x else f"{v} -" for v, x in ratio.items())
    by_kind = []
    for kind in dict.fromkeys(r["case"].kind for r in rows):
        ks = [r for r in rows if r["case"].kind == kind]
        fwd = {
            v: _geomean(
                [
                    per_forward(r)["sdpa"] / per_forward(r)[v]
                    for r in ks
                    if {v, "sdpa"} <= r["t"].keys()
                ]
            )
            for v in variants
        }
        fwd = {v: g for v, g in fwd.items() if not math.isnan(g)}
        if fwd:
            best = max(fwd, key=fwd.get)
            by_kind.append(f"{kind}={best} {fwd[best]:.2f}x")
    errs = sum(len(r["err"]) for r in rows)
    return (
        f"SUMMARY [{device}] {len(rows)} cases, speedup vs eager sdpa per call (geomean): "
        f"{overall}; fastest per forward by kind (setup + {LAYERS} layers, geomean): "
        f"{', '.join(by_kind)}; errors {errs}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--quick", action="store_true", help="subset: B=8 ctx=1024 decode & tree20")
    p.add_argument("--ctx", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--kinds", nargs="+", default=None, choices=list(KINDS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=None, help="interleaved samples per variant")
    p.add_argument("--sample-s", type=float, default=None, help="target seconds per sample")
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: the host is shared)"
    )
    p.add_argument("--no-graph", dest="graph", action="store_false", help="CUDA: no graph replay")
    p.add_argument(
        "--flex-gqa",
        choices=["pack", "enable"],
        default="pack",
        help="flex GQA: fold query heads into rows (default) or flex's enable_gqa=True",
    )
    p.add_argument(
        "--shapes",
        choices=["static", "dynamic"],
        default=None,
        help="compile per shape (CPU default) or with dynamic dims (CUDA default: fewer compiles)",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:  # before any compile: inductor's CPU kernels take their thread count from it
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    args.variants = tuple(v for v in VARIANTS if v in args.variants)
    if "sdpa" not in args.variants:
        args.variants = ("sdpa", *args.variants)  # the reference for checks and ratios
    ctxs = args.ctx or ([1024] if args.quick else [256, 1024, 4096])
    batches = args.batch or ([8] if args.quick else [1, 8])
    kinds = args.kinds or (["decode", "tree20"] if args.quick else list(KINDS))
    args.repeats = args.repeats or (5 if args.quick else 7)
    args.sample_s = args.sample_s or (0.005 if cuda else (0.01 if args.quick else 0.02))
    shapes = args.shapes or ("dynamic" if cuda else "static")
    for key in ("cache_size_limit", "recompile_limit"):  # the name depends on the version
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), 64))
    compiled = Compiled(shapes)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu x{torch.get_num_threads()}"
    print(
        f"# torch {torch.__version__} | {name} | {dtype} | compile shapes {shapes} | "
        f"flex gqa {args.flex_gqa} | "
        f"H={H} H_kv={H_KV} D={D} page={PAGE}, pages shuffled"
    )
    print(
        f"# us per call of one layer (median of {args.repeats} interleaved samples), "
        "spr=(max-min)/median; mask/bm_g/bm_p: per-forward setup us (eager); diff: max abs vs "
        f"sdpa; fastest/fwd: setup + {LAYERS} calls, speedup vs sdpa; s: compiled static"
    )
    t_start = time.perf_counter()
    rows = []
    for ctx in ctxs:
        for b in batches:
            for kind in kinds:
                case = Case(b, ctx, kind)
                try:
                    rows.append(run_case(case, args, compiled, device, dtype))
                except Exception as exc:  # e.g. out of memory: report it and go on
                    print(f"# {case}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    modes = sorted({r["mode"] for r in rows if r["mode"]})
    first = sum(sum(r["first"].values()) for r in rows)
    print(
        f"# timing: {', '.join(modes)} (graph = CUDA graph replay, events* = capture failed); "
        f"compile + first calls {first:.0f} s"
    )
    print_table(rows, args.variants)
    print(f"# wall {time.perf_counter() - t_start:.0f} s")
    print(summary(rows, args.variants, name))


if __name__ == "__main__":
    main()
