"""Where SSD's rounds go, for SSD engines that differ in one option, alternated.

Each setting is an `LLM(mode="ssd", draft_process=True)` on the Qwen pair (target on the first
core, draft process on the last, as `ssd bench` places them), loaded in a process of its own for
each repeat, A B A B … (two SSD engines in one process slow each other down). Per prompt and
setting: decode tok/s, ms per round, τ, hit rate, how long the target waited for the draft per
round and the draft's idle fraction (`LLM.metrics`). A draft that is never idle while the
target waits sets the round.

    python benchmarks/ssd_rounds.py --settings '{"draft_stop": 0.7}' '{}' [--repeats 3]
        [--budget 4] [--max-tokens 128] [--temperature 0] [--num-prompts 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from ssd import specbench
from ssd.bench import decode_seconds, placed
from ssd.config import SamplingParams
from ssd.llm import LLM
from ssd.models.loading import load_tokenizer
from ssd.prepare import prepare_pair


def run_one(setting: str, args: argparse.Namespace) -> list[dict]:
    """One engine with `setting` over the prompts: a row of figures per prompt."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target, draft = prepare_pair("qwen2.5-coder")
    prompts = specbench.chat_prompts(load_tokenizer(target), args.num_prompts, None)
    options = {"mode": "ssd", "draft": draft, "k": 4, "dtype": "bfloat16", "draft_dtype": "int8"}
    options |= {"max_batch": 1, "budget": args.budget, "draft_process": True}
    params = SamplingParams(
        temperature=args.temperature, max_tokens=args.max_tokens, ignore_eos=True, seed=0
    )
    rows = []
    cores = set(sorted(os.sched_getaffinity(0))[:-1]) or os.sched_getaffinity(0)
    with LLM(target, **(options | json.loads(setting))) as llm, placed(cores):
        decode_seconds(llm, prompts[0], SamplingParams(max_tokens=4, ignore_eos=True))
        for prompt in prompts:
            seconds = decode_seconds(llm, prompt, params)
            m = llm.metrics or {}
            row = {"tok_s": (args.max_tokens - 1) / seconds}
            row["round_ms"] = 1000 * seconds / max(1, m.get("rounds") or 1)
            for key in ("mean_accepted_length", "cache_hit_rate"):
                row[key] = m.get(key) or 0.0
            row["wait_ms"] = 1000 * (m.get("target_wait_per_round_s") or 0.0)
            row["draft_idle"] = m.get("draft_idle_fraction") or 0.0
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", nargs="+", default=["{}"], help="LLM options, JSON, each")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=int, default=4)  # as `ssd bench` (K)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--num-prompts", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child: this setting, rows as JSON
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args)))
        return
    shared = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()]
    shared = [a for a in shared if a.split("=")[0] not in ("--settings", "--repeats", "--one")]
    rows: dict[tuple[int, int], list[dict]] = {}
    for _ in range(args.repeats):
        for s, setting in enumerate(args.settings):
            child = [sys.executable, __file__, *shared, "--one", setting]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            for p, row in enumerate(json.loads(out.strip().splitlines()[-1])):
                rows.setdefault((p, s), []).append(row)
    print("prompt setting: tok/s per repeat (median); median round ms, τ, hits, wait ms, idle")
    for (p, s), runs in sorted(rows.items()):
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        speeds = ", ".join(f"{r['tok_s']:.2f}" for r in runs)
        print(
            f"{p} {args.settings[s]}: {speeds} ({med['tok_s']:.2f}); {med['round_ms']:.0f} ms, "
            f"τ {med['mean_accepted_length']:.2f}, hits {med['cache_hit_rate']:.2f}, "
            f"wait {med['wait_ms']:.0f} ms, idle {med['draft_idle']:.2f}"
        )


if __name__ == "__main__":
    main()
