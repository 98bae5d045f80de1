"""AR decode speed: ssd vs transformers `generate` on the same prompts, interleaved A B A B.

Decode tok/s excludes prefill: each engine generates M tokens and 1 token for the same prompts,
and decode time = T(M) - T(1) for (M - 1) tokens per prompt. Reports per-repeat figures, the
median and spread, and the median of the per-repeat ratios.

    python benchmarks/ar_decode.py                       # SmolLM2-135M-Instruct on CPU
    python benchmarks/ar_decode.py --random-shape --tokenizer ~/.cache/ssd/smollm2-135m-instruct \
        --device cuda --jit cudagraph

Prompts: Spec-Bench chat prompts shipped with ssd (`ssd.specbench`), spread over its tasks.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ssd import LLM, SamplingParams, specbench


def random_smollm2(root: Path, layers: int = 30, seed: int = 0) -> Path:
    """A checkpoint with SmolLM2-135M's shapes and random (sharpened) weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 1.5 / p.shape[1] ** 0.5)
    path = root / f"smollm2-shape-{layers}l"
    model.save_pretrained(path)
    return path


def prompts_for(llm: LLM, n: int, tokenizer: str | None = None) -> list[list[int]]:
    """`n` Spec-Bench chat prompts (shipped with ssd), spread over its six tasks, tokenized by
    `tokenizer` (a directory) or else the model's own tokenizer."""
    tok = llm.tokenizer
    if tokenizer is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
    if tok is None:
        raise SystemExit(
            "error: the checkpoint has no tokenizer, so there are no real prompts to time; "
            "pass --tokenizer DIR (e.g. the prepared SmolLM2 for --random-shape)"
        )
    prompts = specbench.chat_prompts(tok, n)
    vocab = llm.model.cfg.vocab_size
    if max(max(p) for p in prompts) >= vocab:
        raise SystemExit(f"error: the tokenizer's ids exceed the model's vocabulary ({vocab})")
    return prompts


def time_ssd(llm: LLM, prompts: list[list[int]], m: int, batch: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=m, ignore_eos=True)
    sync()
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        llm.generate(prompts[i : i + batch], params, use_tqdm=False)
    sync()
    return time.perf_counter() - start


def time_hf(model: torch.nn.Module, prompts: list[list[int]], m: int, device: str) -> float:
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            model.generate(ids, max_new_tokens=m, min_new_tokens=m, do_sample=False, pad_token_id=0)
    sync()
    return time.perf_counter() - start


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="checkpoint dir (default: SmolLM2-135M-Instruct, prepared)")
    ap.add_argument("--random-shape", action="store_true", help="SmolLM2 shapes, random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--jit", default=None)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokenizer", help="tokenizer dir for the prompts (default: the model's)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.random_shape:
        path = random_smollm2(Path(tempfile.mkdtemp()))
    elif args.model:
        path = Path(args.model)
    else:
        from ssd.prepare import prepare_smollm2

        path = prepare_smollm2()
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    llm = LLM(path, device=args.device, dtype=dtype, jit=args.jit, max_batch=1, max_model_len=2048)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(args.device)
    hf.eval()
    prompts = prompts_for(llm, args.prompts, args.tokenizer)
    m = args.max_tokens
    time_ssd(llm, prompts[:1], m, 1)  # warm up: compile / capture
    time_hf(hf, prompts[:1], 4, args.device)
    rows = []
    for _ in range(args.repeats):  # A B A B: both engines see the same machine state
        ours = (
            (m - 1) * len(prompts) / (time_ssd(llm, prompts, m, 1) - time_ssd(llm, prompts, 1, 1))
        )
        ref = (
            (m - 1)
            * len(prompts)
            / (time_hf(hf, prompts, m, args.device) - time_hf(hf, prompts, 1, args.device))
        )
        rows.append((ours, ref, ours / ref))
    mode = llm.runner.target.step.jit
    print(f"AR decode, batch 1, {len(prompts)} prompts x {m} tokens, {args.device} {dtype}, {mode}")
    print(f"{'repeat':>6} {'ssd tok/s':>10} {'HF tok/s':>10} {'ratio':>7}")
    for n, (a, b, r) in enumerate(rows):
        print(f"{n:>6} {a:>10.1f} {b:>10.1f} {r:>7.2f}")
    med = [statistics.median(c) for c in zip(*rows, strict=True)]
    spread = [max(c) - min(c) for c in zip(*rows, strict=True)]
    print(f"{'median':>6} {med[0]:>10.1f} {med[1]:>10.1f} {med[2]:>7.2f}")
    print(f"{'spread':>6} {spread[0]:>10.1f} {spread[1]:>10.1f} {spread[2]:>7.2f}")


if __name__ == "__main__":
    main()
