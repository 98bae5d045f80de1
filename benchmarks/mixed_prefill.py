"""Batched generation over Spec-Bench prompts of mixed lengths (prefill-heavy), with a digest of
the tokens, so two versions of the engine can be timed side by side on the same prompts:

    python benchmarks/mixed_prefill.py                                  # this checkout
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/mixed_prefill.py
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch
from ar_decode import prompts_for

from ssd import LLM, SamplingParams


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from ssd.prepare import prepare_smollm2

    torch.set_num_threads(args.threads)
    llm = LLM(prepare_smollm2(), max_batch=args.prompts, max_model_len=4096)
    prompts = prompts_for(llm, args.prompts)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm up
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(str([o.token_ids for o in outs]).encode()).hexdigest()[:12]
    lens = sorted(len(p) for p in prompts)
    print(
        f"{len(prompts)} prompts ({sum(lens)} tokens, {lens[0]} to {lens[-1]}), batch "
        f"{len(prompts)}, {args.max_tokens} new each: {seconds:.2f} s, tokens {digest}"
    )


if __name__ == "__main__":
    main()
