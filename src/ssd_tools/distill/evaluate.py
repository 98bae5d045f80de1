"""`ssd eval-pair`: acceptance of a target/draft pair on a prompt file, per category.

Temperature 0: the target's greedy answers (plain batched AR), then one teacher-forced draft
pass per answer gives every K at once (`rounds_from_matches`); the first `--check` prompts also
run through the engine's speculative decoding (`LLM(mode="sd")`) at the smallest K as a
cross-check (same tokens, same counts up to floating-point near-ties). Temperature > 0: the
engine's speculative decoding for every K, each request's rounds counted by the engine. Prints
the MACs ratio, tables per category and per K, and writes all figures as JSON with `--json`.
At temperature 0 it also prints how many of the target's tokens the draft predicts next to
prompt lookup (the engine's fast backup): a measure of the copying a draft misses.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ssd import specbench
from ssd.config import SamplingParams
from ssd.engine.metrics import AcceptanceStats, merge_all
from ssd.llm import LLM
from ssd.models import load_model
from ssd.saguaro import ngram_guess
from ssd_tools.distill.acceptance import greedy_matches, rounds_from_matches
from ssd_tools.distill.macs import describe, macs_ratio
from ssd_tools.distill.teacher import continuations

SPEC_BENCH = specbench.PATH  # the Spec-Bench questions shipped with the package


def read_prompts(path: Path, per_category: int | None = None) -> list[tuple[str, str]]:
    """(category, first user turn) per line of a JSONL file with `turns` (Spec-Bench, MT-Bench)
    or `prompt`/`text`; a line that is not JSON is a prompt of category "default"."""
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = defaultdict(int)
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            text = d["turns"][0] if "turns" in d else d.get("prompt") or d["text"]
            cat = str(d.get("category", "default"))
        except (json.JSONDecodeError, TypeError):
            cat, text = "default", line
        if per_category is None or seen[cat] < per_category:
            seen[cat] += 1
            out.append((cat, text))
    return out


def by_category(
    cats: Sequence[str], stats: Sequence[AcceptanceStats], k: int
) -> dict[str, AcceptanceStats]:
    groups: dict[str, list[AcceptanceStats]] = defaultdict(list)
    for c, s in zip(cats, stats, strict=True):
        groups[c].append(s)
    out = {c: merge_all(g, k) for c, g in sorted(groups.items())}
    out["overall"] = merge_all(stats, k)
    return out


def token_agreement(
    cats: Sequence[str],
    prompts: Sequence[Sequence[int]],
    outs: Sequence[Sequence[int]],
    matches: Sequence[Sequence[bool]],
) -> dict[str, dict[str, float]]:
    """Per category (and overall), the fraction of the target's greedy answer tokens, after the
    first, that the draft predicts, that prompt lookup predicts (`ngram_guess`, the engine's
    fast backup), and that either does: how much of the target's text is copying the draft
    misses."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for cat, prompt, out, m in zip(cats, prompts, outs, matches, strict=True):
        seq = list(prompt) + list(out)
        for i in range(1, len(out)):
            pos = len(prompt) + i
            lookup = ngram_guess(seq[:pos], 1)[0] == seq[pos]
            for c in (cat, "overall"):
                for j, hit in enumerate((m[i], lookup, m[i] or lookup, True)):
                    counts[c][j] += hit
    return {
        c: {"draft": d / n, "lookup": g / n, "either": e / n, "tokens": n}
        for c, (d, g, e, n) in sorted(counts.items(), key=lambda kv: (kv[0] == "overall", kv[0]))
        if n
    }


def table(title: str, rows: dict[str, AcceptanceStats]) -> str:
    k = next(iter(rows.values())).k
    head = f"{'category':16s} {'rounds':>7s} {'rate':>6s} {'tau':>6s}  " + " ".join(
        f"P(>={i})" for i in range(1, k + 1)
    )
    lines = [title, head]
    for c, s in rows.items():
        pp = " ".join(f"{x:6.3f}" for x in s.per_position())
        lines.append(f"{c:16s} {s.rounds:7d} {s.rate:6.3f} {s.tau:6.3f}  {pp}")
    return "\n".join(lines)


def speculate(
    target_dir: Path,
    draft_dir: Path,
    prompts: Sequence[Sequence[int]],
    k: int,
    temperature: float,
    max_new_tokens: int,
    *,
    seed: int = 0,
    batch: int = 32,
    progress: bool = False,
) -> tuple[list[AcceptanceStats], list[list[int]]]:
    """Speculative decoding of every prompt by the engine (fp32, SD with K drafts per round):
    each request's verification rounds and tokens. Prompt i is seeded with
    `seed * 1_000_003 + i`, so its result does not depend on its batch."""
    params = [
        SamplingParams(
            temperature=temperature, max_tokens=max_new_tokens, seed=seed * 1_000_003 + i
        )
        for i in range(len(prompts))
    ]
    max_len = max(len(p) for p in prompts) + max_new_tokens + 1
    llm = LLM(
        target_dir,
        draft=draft_dir,
        mode="sd",
        k=k,
        dtype=torch.float32,
        max_batch=batch,
        max_model_len=max_len,
    )
    # admitted in order of length: a decode step gathers every row's pages up to the longest
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with llm:
        ran = llm.generate(
            [list(prompts[i]) for i in order], [params[i] for i in order], use_tqdm=progress
        )
    outs = sorted(ran, key=lambda o: order[o.request_id])  # back in prompt order
    for i, o in enumerate(outs):
        if o.acceptance is None:
            raise ValueError(f"prompt {i}: {o.error}")
    return [o.acceptance for o in outs if o.acceptance], [o.token_ids for o in outs]


def evaluate_pair(
    target_dir: Path,
    draft_dir: Path,
    prompts: Sequence[Sequence[int]],
    cats: Sequence[str],
    ks: Sequence[int],
    temperatures: Sequence[float],
    max_new_tokens: int,
    *,
    seed: int = 0,
    batch: int = 32,
    check: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """All figures as {"T=<t>": {"K=<k>": {category: stats}}}.

    Temperature 0: the target's greedy AR answers, then every K counted from one teacher-forced
    draft pass (`rounds_from_matches`); the first `check` prompts also run through the engine's
    SD at the smallest K, and both versions of their figures are kept under "check". Other
    temperatures: the engine's SD for every K.
    """
    result: dict[str, Any] = {}
    run: dict[str, Any] = {"seed": seed, "batch": batch, "progress": progress}
    for temp in temperatures:
        res: dict[str, Any] = {}
        t0 = time.perf_counter()
        if temp == 0:
            target, draft = load_model(target_dir), load_model(draft_dir)
            outs = continuations(target, prompts, max_new_tokens, batch=batch, progress=progress)
            matches = [greedy_matches(draft, p, o) for p, o in zip(prompts, outs, strict=True)]
            for k in ks:
                res[f"K={k}"] = by_category(cats, [rounds_from_matches(m, k) for m in matches], k)
            res["tokens"] = token_agreement(cats, prompts, outs, matches)
            if check:
                k0, n = min(ks), min(check, len(prompts))
                sd, sd_outs = speculate(
                    target_dir, draft_dir, prompts[:n], k0, 0.0, max_new_tokens, **run
                )
                counted = [rounds_from_matches(m, k0) for m in matches[:n]]
                res["check"] = {
                    "prompts": n,
                    "same_tokens": sum(a == b for a, b in zip(sd_outs, outs, strict=False)),
                    "engine": merge_all(sd, k0).to_dict(),
                    "counted": merge_all(counted, k0).to_dict(),
                }
        else:
            for k in ks:
                sd, _ = speculate(target_dir, draft_dir, prompts, k, temp, max_new_tokens, **run)
                res[f"K={k}"] = by_category(cats, sd, k)
        res["seconds"] = time.perf_counter() - t0
        result[f"T={temp:g}"] = res
    return result


def _jsonable(x: Any) -> Any:
    if isinstance(x, AcceptanceStats):
        return x.to_dict()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssd eval-pair",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", help="target HF directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--draft", help="draft HF directory (default: the committed distilled draft)")
    p.add_argument("--prompts", type=Path, default=SPEC_BENCH, help="JSONL prompt file")
    p.add_argument("--per-category", type=int, help="use at most N prompts of each category")
    p.add_argument("--k", default="4,5,6,7,8", help="comma-separated draft lengths")
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--check",
        type=int,
        default=16,
        help="at T=0, also run the engine's SD on the first N prompts as a cross-check",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts as raw text")
    p.add_argument("--json", type=Path, help="write all figures here")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from ssd.models import ModelConfig, load_tokenizer
    from ssd.prepare import prepare_draft, prepare_smollm2
    from ssd_tools.distill.pipeline import chat_ids

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    target_dir = Path(args.target) if args.target else prepare_smollm2(progress=not args.quiet)
    draft_dir = Path(args.draft) if args.draft else prepare_draft()
    target_cfg = ModelConfig.from_pretrained(target_dir)
    draft_cfg = ModelConfig.from_pretrained(draft_dir)
    tok = load_tokenizer(target_dir)
    items = read_prompts(args.prompts, args.per_category)
    encode = (
        (lambda s: list(tok.encode(s))) if args.no_chat_template else (lambda s: chat_ids(tok, s))
    )
    prompts = [encode(text) for _, text in items]
    ks = [int(x) for x in args.k.split(",")]
    temps = [float(x) for x in args.temperatures.split(",")]
    print(describe(draft_cfg, target_cfg))
    print(f"target {target_dir}\ndraft  {draft_dir}\nprompts {args.prompts} ({len(items)})")
    res = evaluate_pair(
        target_dir,
        draft_dir,
        prompts,
        [c for c, _ in items],
        ks,
        temps,
        args.max_new_tokens,
        seed=args.seed,
        batch=args.batch,
        check=args.check,
        progress=not args.quiet,
    )
    for tname, per_k in res.items():
        for kname, rows in per_k.items():
            if kname.startswith("K="):
                print("\n" + table(f"{tname} {kname}", rows))
        if "tokens" in per_k:
            print("\ntokens right (after the first): draft / prompt lookup / either")
            for c, t in per_k["tokens"].items():
                print(f"{c:16s} {t['draft']:6.3f} {t['lookup']:6.3f} {t['either']:6.3f}")
        if "check" in per_k:
            sd, cnt = per_k["check"]["engine"], per_k["check"]["counted"]
            print(
                f"\ncheck: the engine's SD on the first {per_k['check']['prompts']} prompts gives "
                f"the AR tokens for {per_k['check']['same_tokens']} of them"
            )
            print(
                f"\ncheck at K={sd['k']}: engine rate {sd['rate']:.4f} tau "
                f"{sd['tau']:.4f} | counted rate {cnt['rate']:.4f} tau {cnt['tau']:.4f}"
            )
    if args.json:
        out = {
            "target": str(target_dir),
            "draft": str(draft_dir),
            "prompts": str(args.prompts),
            "max_new_tokens": args.max_new_tokens,
            "seed": args.seed,
            "macs_ratio": macs_ratio(draft_cfg, target_cfg),
            "results": _jsonable(res),
        }
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0
