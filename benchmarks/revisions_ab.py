"""Two revisions of the engine side by side: `ssd bench` from each, alternated A B A B.

Each revision is checked out into a temporary git worktree and benched in a process of its own
(its kernels build into their own cache folder, keyed by their sources), so a change is timed
against its parent on the same machine within minutes. Prints each run's tok/s per mode (and τ,
the mean accepted length, where a mode speculates) and the median of the per-pair ratios B / A.

    python benchmarks/revisions_ab.py HEAD~1 HEAD --modes ar,sd,ssd --pairs 2 [-- bench options]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(src: Path, modes: str, extra: list[str], out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "ssd.cli", "bench", "--modes", modes, "--repeats", "1"]
    cmd += ["--no-progress", "--json", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    modes = json.loads(out.read_text())["modes"]
    return {name: row["median"] for name, row in modes.items()} | {
        f"{name} tau": row["metrics"]["mean_accepted_length"]
        for name, row in modes.items()
        if (row.get("metrics") or {}).get("mean_accepted_length")
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--modes", default="ar,sd,ssd")
    ap.add_argument("--pairs", type=int, default=2)
    args, extra = ap.parse_known_args()
    extra = [x for x in extra if x != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for label, rev in (("A", args.a), ("B", args.b)):
            trees[label] = Path(tmp) / label
            add = ["worktree", "add", "-q", "--detach", str(trees[label]), rev]
            subprocess.run(["git", "-C", str(ROOT), *add], check=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            for i in range(args.pairs):
                for label in ("A", "B"):
                    out = Path(tmp) / f"{label}{i}.json"
                    runs[label].append(bench(trees[label] / "src", args.modes, extra, out))
                    figures = "  ".join(f"{m} {v:.2f}" for m, v in runs[label][-1].items())
                    print(f"pair {i + 1} {label}: {figures}", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])
    for mode in runs["A"][0]:
        if mode.endswith(" tau"):  # acceptance, printed with each run above
            continue
        ratios = [b[mode] / a[mode] for a, b in zip(runs["A"], runs["B"], strict=True)]
        spread = max(ratios) - min(ratios)
        print(f"{mode}: B / A median {statistics.median(ratios):.3f} (spread {spread:.3f})")


if __name__ == "__main__":
    main()
