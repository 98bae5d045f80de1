"""`ssd distill`: data -> train -> export, each phase resumable.

Phases (all by default, in order; each skips work already on disk under `--run-dir`):
1. data: synthetic chat prompts (`prompts.py`), answered by the target; top-k recorded.
2. train: distill the draft on those records, holding out every 32nd prompt.
3. export: write the artifact (trained tensors + manifest), assemble the Hugging Face draft
   directory, and record the held-out numbers in the manifest.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

HELDOUT_EVERY = 32  # prompt i is held out when i % 32 == 0
TEXT_BASE = 1_000_000  # record indices of raw-text chunks start here
CALIB_SEQS, CALIB_LEN = 24, 512  # training sequences that rank the FFN neurons


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    """The token ids of one user turn through the target's chat template, ready to answer."""
    s = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer.encode(s, add_special_tokens=False))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssd distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", help="target HF directory (default: prepared SmolLM2-135M-Instruct)")
    p.add_argument("--run-dir", type=Path, help="default: $SSD_CACHE_DIR/distill/<artifact name>")
    p.add_argument(
        "--artifact-dir",
        type=Path,
        help="where to write the artifact "
        "(default: <run-dir>/artifact; the committed one is artifacts/draft/...)",
    )
    p.add_argument("--phase", choices=["all", "data", "train", "export"], default="all")
    p.add_argument("--prompts", type=int, default=1600, help="number of synthetic prompts")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument(
        "--sample-every",
        type=int,
        default=4,
        help="every n-th prompt is answered at temperature 1, the rest greedily",
    )
    p.add_argument("--gen-batch", type=int, default=96)
    p.add_argument("--top-k", type=int, default=64, help="teacher log-probs kept per position")
    p.add_argument(
        "--text-seqs",
        type=int,
        default=0,
        help="also distill on this many raw stdlib text chunks (prefill only)",
    )
    p.add_argument("--text-len", type=int, default=512, help="tokens per text chunk")
    p.add_argument(
        "--layers", default="0,1,16,17,18,23,29", help="target layers the draft starts from"
    )
    p.add_argument(
        "--ffn",
        type=int,
        default=384,
        help="FFN neurons kept per layer (the most important ones; target width: all)",
    )
    p.add_argument(
        "--frozen",
        default="0",
        help="draft layers whose target tensors stay untrained (attention and norms when the FFN "
        "is narrowed, else the whole layer)",
    )
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--tokens-per-step", type=int, default=2048)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument(
        "--negatives",
        type=int,
        default=2048,
        help="sampled-softmax draws per step (0: full softmax, about 3x slower)",
    )
    p.add_argument(
        "--prompt-weight",
        type=float,
        default=0.3,
        help="loss weight of prompt positions (answer positions weigh 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-amp", action="store_true", help="train in fp32 (slower)")
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--quiet", action="store_true")
    return p


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import LlamaForCausalLM

    from ssd.models import load_model, load_tokenizer
    from ssd.prepare import DRAFT_NAME, assemble_draft, cache_root, prepare_smollm2
    from ssd_tools.distill.corpus import stdlib_passages, text_chunks
    from ssd_tools.distill.draft import ffn_importance, init_draft, save_artifact
    from ssd_tools.distill.prompts import make_prompts
    from ssd_tools.distill.teacher import Job, generate_shards, load_all
    from ssd_tools.distill.train import TrainConfig, evaluate_heldout, train

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.quiet
    target_dir = Path(args.target) if args.target else prepare_smollm2(progress=progress)
    run_dir = args.run_dir or cache_root() / "distill" / DRAFT_NAME
    run_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    if args.phase in ("all", "data"):
        tok = load_tokenizer(target_dir)
        prompts = make_prompts(args.prompts, args.seed, stdlib_passages())
        jobs = [
            Job(
                p.index,
                p.category,
                chat_ids(tok, p.text),
                1.0 if (p.index % args.sample_every == args.sample_every - 1) else 0.0,
                args.max_new_tokens,
                args.seed * 1_000_003 + p.index,
            )
            for p in prompts
        ]
        generate_shards(
            load_model(target_dir),
            jobs,
            run_dir / "teacher",
            batch=args.gen_batch,
            top_k=args.top_k,
            progress=progress,
        )
        if args.text_seqs:
            chunks = text_chunks(tok, args.text_seqs, args.text_len, args.seed)
            text_jobs = [Job(TEXT_BASE + i, "text", c, 0.0, 1, 0) for i, c in enumerate(chunks)]
            generate_shards(
                load_model(target_dir),
                text_jobs,
                run_dir / "text",
                batch=args.gen_batch,
                top_k=args.top_k,
                progress=progress,
            )
        times["data_s"] = time.perf_counter() - t
    if args.phase == "data":
        return {"run_dir": str(run_dir), **times}
    recs = [r for r in load_all(run_dir / "teacher") if r["index"] < args.prompts]
    heldout = [r for r in recs if r["index"] % HELDOUT_EVERY == 0]
    trainset = [r for r in recs if r["index"] % HELDOUT_EVERY != 0]
    if args.text_seqs:
        text = load_all(run_dir / "text") if (run_dir / "text").exists() else []
        trainset += [r for r in text if r["index"] < TEXT_BASE + args.text_seqs]
    layers, frozen = _ints(args.layers), _ints(args.frozen)
    target = LlamaForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    calib = [r["tokens"][:CALIB_LEN] for r in sorted(trainset, key=lambda r: r["index"])]
    importance = ffn_importance(target, layers, calib[:CALIB_SEQS])
    draft = init_draft(target, layers, frozen, args.ffn, importance)
    del target
    cfg = TrainConfig(
        steps=args.steps,
        tokens_per_step=args.tokens_per_step,
        max_len=args.max_len,
        lr=args.lr,
        seed=args.seed,
        amp=not args.no_amp,
        eval_every=args.eval_every,
        negatives=args.negatives,
        prompt_weight=args.prompt_weight,
    )
    t = time.perf_counter()
    log = train(draft, trainset, heldout, cfg, run_dir / "train", progress=progress)
    times["train_s"] = time.perf_counter() - t
    if args.phase == "train":
        return {"run_dir": str(run_dir), "log": log, **times}
    art = args.artifact_dir or run_dir / "artifact"
    n_tokens = sum(int(r["tokens"].numel()) for r in trainset)
    extra = {
        "target": target_dir.name,
        "train": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("target", "run_dir", "artifact_dir", "quiet", "phase")
        },
        "data": {"sequences": len(trainset), "tokens": n_tokens, "heldout": len(heldout)},
    }
    save_artifact(draft, layers, frozen, art, extra)
    hf = assemble_draft(art, target_dir, run_dir / "hf")
    final = evaluate_heldout(
        LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32), heldout, cfg.k_eval
    )
    manifest = json.loads((art / "draft.json").read_text())
    manifest["heldout"] = final
    (art / "draft.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"run_dir": str(run_dir), "artifact": str(art), "hf": str(hf), "heldout": final, **times}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = run(args)
    print(json.dumps({k: v for k, v in out.items() if k != "log"}, indent=2))
    return 0
