"""`ssd bench`: this engine's AR, SD and SSD next to transformers, side by side on one machine.

Every mode decodes the same token inputs (Spec-Bench by default, chat template applied once),
interleaved A B C … A B C … over repeats, EOS ignored so each produces exactly `max_tokens`.
Decode speed excludes prefill: tok/s = Σ(M − 1) / Σ(time from the first generated token to the
last), each run timing its own first token (a streamer in transformers, the output stream
here), so a long prompt's prefill, and its noise, stay out of the figure. AR, SD and the
transformers modes get every core in this process; SSD's target keeps all cores but the last,
which its draft process gets; "SD on the target cores" runs SD on SSD's target cores alone
(SSD's framing: one device more).

Next to each figure: its ceiling, the tok/s that the bandwidth of the mode's cores allows for
the bytes it streams per token (docs/performance.md; bandwidth measured on one core and on all
of them before every mode of every repeat, the median used, since the machine's drifts): AR
streams every weight but the input embedding once per token; SD streams its draft passes (K, or
the measured mean after early stops) and one verification per round of τ tokens; SSD's round is
the slowest of its verification on the target's cores, its K draft passes (the tree steps: the
glue comes carried with the speculation) on the last core, and both over the shared bus. The
speed model's predicted ratio to AR (those byte counts with the measured τ) is printed beside
the measured ratio.

    ssd bench [--pair qwen2.5-coder | --target DIR --draft DIR] [--prompts FILE.jsonl]
        [--num-prompts 2] [--max-tokens 128] [--repeats 2] [--temperature 0] [--k 4]
        [--draft-stop P]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ssd import saguaro
from ssd.config import CPU_DRAFT_STOP, SamplingParams, draft_stop_problem
from ssd.kernels import linear
from ssd.models import huge_pages
from ssd.models.loading import Model

MODES = ("hf", "hf-assisted", "ar", "sd", "ssd", "sd-target-cores")
LABELS = {
    "hf": "transformers generate",
    "hf-assisted": "transformers assisted",
    "ar": "ssd AR",
    "sd": "ssd SD",
    "ssd": "ssd SSD",
    "sd-target-cores": "ssd SD, target cores",
}


def weight_bytes(model: Model) -> int:
    """Bytes a forward streams: every weight but the input embedding (a lookup reads a row)."""
    p = model.params
    leaves = [*p.layers.values(), p.final_norm, *p.head_scale.values()]
    if p.lm_head is not p.embed:
        leaves.append(p.lm_head)
    else:  # tied: the head reads the embedding matrix in full
        leaves.append(p.embed)
    return sum(t.numel() * t.element_size() for t in leaves)


def bandwidth_probe(mib: int = 512) -> Callable[[int], float]:
    """A probe of the machine's limit for streaming weights: `probe(threads)` is the GB/s of the
    best of a bf16 matrix-vector product (the decode kernel) and a plain read on `threads`
    threads. Its buffers are made once, so that a run can probe between all its modes."""
    k = 2048
    # on huge pages, as the engine's weights (`ssd.models.huge_pages`)
    w = huge_pages.move(torch.randn(mib * 2**20 // (2 * k), k).bfloat16())
    x = torch.randn(1, k).bfloat16()
    f32 = huge_pages.move(torch.randn(mib * 2**20 // 4))

    def probe(threads: int) -> float:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            best = 0.0
            for fn, n in ((lambda: linear(x, w), w.numel() * 2), (f32.sum, f32.numel() * 4)):
                fn()
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                best = max(best, n / statistics.median(times) / 1e9)
            return best
        finally:
            torch.set_num_threads(old)

    return probe


@dataclasses.dataclass
class Mode:
    """One way of generating: `run(prompt, n)` generates n tokens; metrics after each run."""

    name: str
    run: Callable[[list[int], int], float]  # (prompt, M) -> seconds after the first token
    cores: set[int]
    metrics: Callable[[], dict[str, Any] | None] = lambda: None


@contextlib.contextmanager
def placed(cores: set[int]) -> Iterator[None]:
    """Run on `cores` with one thread each, then restore."""
    old_aff, old_threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, old_aff)
        torch.set_num_threads(old_threads)


class _FirstToken:
    """A transformers streamer that notes when the first generated token arrives (its first
    `put` is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.at = 0, 0.0

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def _hf_runner(model: Any, temperature: float, assistant: Any = None) -> Callable:
    from transformers import GenerationConfig

    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    pad = model.config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad

    def run(prompt: list[int], n: int) -> float:
        # A fresh config: the checkpoint's own generation_config (repetition penalty, top-k)
        # would change the law and make the comparison unfair.
        cfg = GenerationConfig(
            max_new_tokens=n, min_new_tokens=n, pad_token_id=pad, eos_token_id=pad, **sampling
        )
        extra = {"assistant_model": assistant} if assistant is not None else {}
        first = _FirstToken()
        with torch.inference_mode():
            model.generate(torch.tensor([prompt]), generation_config=cfg, streamer=first, **extra)
        return time.perf_counter() - first.at

    return run


# metrics averaged over a mode's rounds
_AVERAGED = ("acceptance_rate", "mean_accepted_length", "drafted_per_round", "cache_hit_rate")


def decode_seconds(llm: Any, prompt: list[int], params: SamplingParams) -> float:
    """Generate with this engine; seconds from the first generated token to the last."""
    first = None
    for _ in llm.generate_stream([prompt], params):
        first = first or time.perf_counter()
    assert first is not None
    return time.perf_counter() - first


def _ssd_runner(llm: Any, temperature: float) -> tuple[Callable, Callable]:
    totals: dict[str, float] = {}

    def run(prompt: list[int], n: int) -> float:
        params = SamplingParams(temperature=temperature, max_tokens=n, ignore_eos=True, seed=0)
        decode = decode_seconds(llm, prompt, params)
        m = llm.metrics
        if m and m.get("rounds") and n > 1:
            r = m["rounds"]
            totals["rounds"] = totals.get("rounds", 0) + r
            for key in _AVERAGED:
                if m.get(key) is not None:
                    totals[key] = totals.get(key, 0.0) + m[key] * r
        return decode

    def metrics() -> dict[str, Any] | None:
        if not totals:
            return None
        r = totals["rounds"]
        return {k: v / r for k, v in totals.items() if k != "rounds"} | {"rounds": r}

    return run, metrics


def build_modes(
    args: argparse.Namespace, target: Path, draft: Path
) -> tuple[list[Mode], list[Any]]:
    """The modes asked for, and the engines to close afterwards (SSD's draft process)."""
    from ssd.llm import LLM

    everything = set(os.sched_getaffinity(0))
    target_cores = set(sorted(everything)[:-1]) or everything
    common: dict[str, Any] = {
        "dtype": args.dtype,
        "max_batch": 1,
        "max_model_len": args.max_model_len,
    }
    spec = {"draft": draft, "k": args.k, "draft_dtype": args.draft_dtype, **common}
    budget = args.budget or args.k
    modes: list[Mode] = []
    wanted = args.modes.split(",")
    hf = hf_draft = None
    if "hf" in wanted or "hf-assisted" in wanted:
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, args.dtype)
        hf = AutoModelForCausalLM.from_pretrained(target, dtype=dtype).eval()
        if "hf-assisted" in wanted:
            hf_draft = AutoModelForCausalLM.from_pretrained(draft, dtype=dtype).eval()
    t = args.temperature
    if "hf" in wanted:
        modes.append(Mode("hf", _hf_runner(hf, t), everything))
    if "hf-assisted" in wanted:
        modes.append(Mode("hf-assisted", _hf_runner(hf, t, hf_draft), everything))
    if "ar" in wanted:
        run, metrics = _ssd_runner(LLM(target, **common), t)
        modes.append(Mode("ar", run, everything, metrics))
    if "sd" in wanted or "sd-target-cores" in wanted:
        sd = LLM(target, mode="sd", draft_stop=args.draft_stop, **spec)
        run, metrics = _ssd_runner(sd, t)
        if "sd" in wanted:
            modes.append(Mode("sd", run, everything, metrics))
        if "sd-target-cores" in wanted:
            run2, metrics2 = _ssd_runner(sd, t)
            modes.append(Mode("sd-target-cores", run2, target_cores, metrics2))
    if "ssd" in wanted:
        stop = None if args.backup == "fast" else args.draft_stop  # the neural backup's
        ssd = LLM(
            target,
            mode="ssd",
            backup=args.backup,
            budget=budget,
            draft_stop=stop,
            draft_process=True,
            **spec,
        )
        run, metrics = _ssd_runner(ssd, t)
        modes.append(Mode("ssd", run, target_cores, metrics))
        return modes, [ssd]
    return modes, []


def ceilings(
    modes: list[Mode],
    result: dict[str, Any],
    b_target: int,
    b_draft: int,
    k: int,
    bw: dict[int, float],
) -> None:
    """Per mode: bytes per token, the ceiling tok/s, predicted ratio to AR. `bw[n]` is the
    bandwidth n cores reach: one core streams about half of what two do, so a mode's ceiling
    is set by the cores it runs on, and SSD's round by the slower of its target (verifying on
    its cores), its draft (K passes on the last core) and the shared bus (both at once)."""
    every = max(bw)
    bps = {n: gb_s * 1e9 for n, gb_s in bw.items()}
    for mode in modes:
        row = result["modes"][mode.name]
        m = row.get("metrics") or {}
        tau = m.get("mean_accepted_length")
        cores = bps[len(mode.cores)]
        seconds: float | None = None  # per token, at the ceiling
        if mode.name in ("hf", "ar"):
            seconds = b_target / cores
        elif mode.name.startswith("sd") and tau:
            passes = m.get("drafted_per_round") or k  # fewer than K after early stops
            seconds = (passes * b_draft + b_target) / cores / tau
        elif mode.name == "ssd" and tau:
            draft = k * b_draft  # the tree steps; a glue pass only after an n-gram guess
            apart = max(b_target / cores, draft / bps[1])
            seconds = max(apart, (draft + b_target) / bps[every]) / tau
            # A miss drafts K tokens on the spot before verifying: the ceiling at the measured
            # hit rate adds those passes to the missed rounds.
            hits = m.get("cache_hit_rate")
            if hits is not None:
                miss = (1 - hits) * k * b_draft / bps[1] / tau
                row["ceiling_at_hit_rate_tok_s"] = 1 / (seconds + miss)
        if seconds is not None:
            row["seconds_per_token_at_ceiling"] = seconds
            row["ceiling_tok_s"] = 1 / seconds
            row["model_x_ar"] = b_target / bps[every] / seconds


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from ssd import specbench
    from ssd.models.loading import load_model, load_tokenizer
    from ssd.models.quantize import load_at

    target, draft = _pair(args)
    tok = load_tokenizer(target)
    prompts = specbench.chat_prompts(tok, args.num_prompts, args.prompts)
    cores = len(os.sched_getaffinity(0))
    dtype = getattr(torch, args.dtype)
    b_target = weight_bytes(load_model(target, dtype=dtype))
    b_draft = weight_bytes(load_at(draft, args.draft_dtype))
    modes, engines = build_modes(args, target, draft)
    m = args.max_tokens
    total = len(modes) * len(prompts) * args.repeats
    bar = tqdm(total=total, desc="bench", unit="run", disable=not args.progress)
    for mode in modes:  # warm-up
        with placed(mode.cores):
            mode.run(prompts[0], 4)
    speeds: dict[str, list[float]] = {mode.name: [] for mode in modes}
    counts = sorted({1, cores} | {len(mode.cores) for mode in modes})
    bws: dict[int, list[float]] = {n: [] for n in counts}
    probe = bandwidth_probe()
    for _ in range(args.repeats):
        for mode in modes:  # the bandwidth drifts within a run: probed before every mode
            for n in counts:
                bws[n].append(probe(n))
            decode = 0.0
            with placed(mode.cores):
                for p in prompts:  # decode: from the first generated token to the last
                    decode += mode.run(p, m)
                    bar.update()
            speeds[mode.name].append((m - 1) * len(prompts) / decode)
    bar.close()
    for engine in engines:
        engine.close()
    bw = {n: statistics.median(v) for n, v in bws.items()}
    result: dict[str, Any] = {
        "target": str(target),
        "draft": str(draft),
        "dtype": args.dtype,
        "draft_dtype": args.draft_dtype,
        "k": args.k,
        "draft_stop": args.draft_stop,
        "temperature": args.temperature,
        "prompts": len(prompts),
        "prompt_tokens": [len(p) for p in prompts],
        "max_tokens": m,
        "repeats": args.repeats,
        "cores": cores,
        "bandwidth_gb_s": bw[cores],
        "bandwidth_by_cores_gb_s": bw,
        "bandwidth_runs_gb_s": bws,
        "target_bytes": b_target,
        "draft_bytes": b_draft,
        "modes": {},
    }
    for mode in modes:
        s = speeds[mode.name]
        row: dict[str, Any] = {
            "label": LABELS[mode.name],
            "cores": sorted(mode.cores),
            "tok_s": s,
            "median": statistics.median(s),
            "spread": max(s) - min(s),
            "metrics": mode.metrics(),
        }
        for ref in ("hf", "hf-assisted", "ar"):  # ratios within each repeat, then the median
            if ref in speeds:
                pairs = zip(s, speeds[ref], strict=True)
                row[f"x_{ref}"] = statistics.median(a / b for a, b in pairs)
        result["modes"][mode.name] = row
    ceilings(modes, result, b_target, b_draft, args.k, bw)
    return result


def _per_core(result: dict[str, Any]) -> str:
    one = (result.get("bandwidth_by_cores_gb_s") or {}).get(1)
    return f" ({one:.1f} on one core)" if one and result["cores"] > 1 else ""


def table(result: dict[str, Any]) -> str:
    nan = float("nan")
    lines = [
        f"{result['prompts']} prompts x {result['max_tokens']} tokens, T={result['temperature']}, "
        f"K={result['k']}, target {result['dtype']}, draft {result['draft_dtype']}, "
        f"{result['cores']} cores, {result['repeats']} interleaved repeats; bandwidth "
        f"{result['bandwidth_gb_s']:.1f} GB/s{_per_core(result)}; bytes/forward: target "
        f"{result['target_bytes'] / 1e9:.2f} GB, draft {result['draft_bytes'] / 1e9:.2f} GB",
        f"{'mode':<24}{'tok/s':>7}{'spread':>8}{'x HF':>7}{'x asst':>7}{'x AR':>7}"
        f"{'model':>7}{'ceiling':>9}{'% ceil':>8}  acceptance / tau / hits",
        "  (x: median of per-repeat ratios; model: the speed model's x AR; ceiling: tok/s at "
        "the bandwidth its cores reach)",
    ]
    for row in result["modes"].values():
        ceiling = row.get("ceiling_tok_s")
        m = row.get("metrics") or {}
        extra = " / ".join(
            f"{m[k]:.3f}"
            for k in ("acceptance_rate", "mean_accepted_length", "cache_hit_rate")
            if m.get(k) is not None
        )
        lines.append(
            f"{row['label']:<24}{row['median']:>7.2f}{row['spread']:>8.2f}"
            f"{row.get('x_hf', nan):>7.2f}{row.get('x_hf-assisted', nan):>7.2f}"
            f"{row.get('x_ar', nan):>7.2f}{row.get('model_x_ar', nan):>7.2f}"
            + (f"{ceiling:>9.2f}{100 * row['median'] / ceiling:>7.0f}%" if ceiling else " " * 17)
            + f"  {extra}"
        )
        if row.get("ceiling_at_hit_rate_tok_s"):
            at_hits = row["ceiling_at_hit_rate_tok_s"]
            lines.append(
                f"{'  at its hit rate':<24}{'':>43}{at_hits:>9.2f}"
                f"{100 * row['median'] / at_hits:>7.0f}%  (misses draft K tokens first)"
            )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = list(result["modes"].values())
    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = [r["label"] for r in rows]
    med = [r["median"] for r in rows]
    err = [
        [r["median"] - min(r["tok_s"]) for r in rows],
        [max(r["tok_s"]) - r["median"] for r in rows],
    ]
    ax.barh(names, med, xerr=err, color="#4c78a8")
    for i, r in enumerate(rows):
        if r.get("ceiling_tok_s"):
            ax.plot([r["ceiling_tok_s"]] * 2, [i - 0.4, i + 0.4], color="#e45756", lw=2)
    ax.invert_yaxis()
    ax.set_xlabel("decode tok/s (bars: median and range; red: bandwidth ceiling)")
    ax.set_title(f"T={result['temperature']}, K={result['k']}, {result['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _pair(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.target or args.draft:
        if not (args.target and args.draft):
            raise ValueError("--target and --draft go together")
        return Path(args.target), Path(args.draft)
    from ssd.prepare import prepare_pair

    return prepare_pair(args.pair)


def parser() -> argparse.ArgumentParser:
    from ssd.prepare import DEFAULT_PAIR, PAIRS

    ap = argparse.ArgumentParser(prog="ssd bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default=DEFAULT_PAIR, choices=sorted(PAIRS))
    ap.add_argument("--target", help="target checkpoint dir (with --draft; overrides --pair)")
    ap.add_argument("--draft", help="draft checkpoint dir")
    ap.add_argument("--prompts", type=Path, default=None, help="jsonl (default: Spec-Bench)")
    ap.add_argument("--num-prompts", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument(
        "--draft-stop",
        type=float,
        default=CPU_DRAFT_STOP,
        help="SD, and SSD's neural backup: end a round's drafting once the draft gives its token "
        f"a probability below this (default {CPU_DRAFT_STOP}, as `ssd generate` on CPU; 0: K "
        "tokens every round)",
    )
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--draft-dtype", default="int8", help="int8, bfloat16 or float32")
    ap.add_argument("--backup", default="neural", choices=saguaro.BACKUPS)
    # On CPUs the tree steps are compute-bound (budget rows per draft forward) and set SSD's
    # round: K by default (docs/performance.md, findings 5 and 28).
    ap.add_argument("--budget", type=int, default=None, help="SSD branches (default K)")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    ap.add_argument("--json", type=Path, default=Path("bench.json"))
    ap.add_argument("--plot", type=Path, default=Path("bench.png"))
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    bad = [m for m in args.modes.split(",") if m not in MODES]
    if bad or args.num_prompts < 1 or args.max_tokens < 2 or args.repeats < 1 or args.k < 1:
        print(
            f"error: modes must be among {', '.join(MODES)} (got {bad}); --num-prompts, "
            "--repeats and --k must be >= 1 and --max-tokens >= 2",
            file=sys.stderr,
        )
        return 2
    if problem := draft_stop_problem(args.draft_stop):
        print(f"error: --draft-stop: {problem}", file=sys.stderr)
        return 2
    result = run_bench(args)
    print(table(result))
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    shown = f" and {args.plot}" if plot(result, args.plot) else " (no matplotlib: no plot)"
    print(f"wrote {args.json}{shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
