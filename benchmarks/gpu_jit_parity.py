"""CUDA: do eager, compile and cudagraph give the same greedy tokens (fp32 and bf16)?

Prints the agreement of each pair and fails unless cudagraph equals compile exactly (a replay
runs the compiled kernels) and, in fp32, eager equals both. In bf16 eager and compile may part
at a near-tie (inductor fuses the norms, rounding once where eager rounds per op): printed only.

PYTHONPATH=src python benchmarks/gpu_jit_parity.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from ar_decode import random_smollm2

from ssd import LLM, SamplingParams


def main() -> None:
    path = random_smollm2(Path(tempfile.mkdtemp()), layers=4)
    prompts = torch.randint(0, 49152, (2, 40), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    for dtype in ("float32", "bfloat16"):
        outs = {}
        for mode in ("eager", "compile", "cudagraph"):
            llm = LLM(path, device="cuda", dtype=dtype, jit=mode, max_batch=2, max_model_len=512)
            outs[mode] = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        for a, b in (("eager", "compile"), ("eager", "cudagraph"), ("compile", "cudagraph")):
            same = sum(
                x == y
                for p, q in zip(outs[a], outs[b], strict=True)
                for x, y in zip(p, q, strict=True)
            )
            first = [
                next((i for i, (x, y) in enumerate(zip(p, q, strict=True)) if x != y), None)
                for p, q in zip(outs[a], outs[b], strict=True)
            ]
            print(f"{dtype:<9} {a} vs {b}: {same}/64 equal, first difference at {first}")
            if (a, b) == ("compile", "cudagraph") or dtype == "float32":
                assert outs[a] == outs[b], f"{dtype}: {a} and {b} differ at {first}"


if __name__ == "__main__":
    main()
