"""One prepared CUDA run: correctness of the CUDA paths and a few speed figures.

    PYTHONPATH=src python benchmarks/gpu_check.py

Sections are independent (a failure prints and the run goes on) and stop starting once the
time budget is spent. Prints one compact report.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ar_decode import random_smollm2, time_hf, time_ssd

from ssd import LLM, SamplingParams
from ssd import random as rnd
from ssd.sampling import saguaro_q, sample, verify_chain

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script itself
LAYERS = 30 if DEV == "cuda" else 2
BUDGET_S = 260 if DEV == "cuda" else 200
START = time.perf_counter()
ROOT = Path(tempfile.mkdtemp())


SECTIONS = []


def section(name):
    def wrap(f):
        SECTIONS.append((name, f))
        return f

    return wrap


def run_section(name, f):
    if True:
        left = BUDGET_S - (time.perf_counter() - START)
        if os.environ.get("ONLY", name) not in name:
            return
        if left < 20:
            print(f"[{name}] skipped: time budget spent")
            return
        t0 = time.perf_counter()
        try:
            f()
            print(f"[{name}] ok ({time.perf_counter() - t0:.0f}s)")
        except Exception:
            print(f"[{name}] FAILED ({time.perf_counter() - t0:.0f}s)")
            traceback.print_exc(limit=6)
        sys.stdout.flush()


@section("random: CPU == CUDA")
def _():
    k = rnd.split(rnd.key(5), 64)
    for f in (lambda k: rnd.bits(k, (999,))[0], lambda k: rnd.uniform(k, (999,))):
        assert torch.equal(f(k), f(k.to(DEV)).cpu())
    e = rnd.exponential(k, (999,), torch.float64)
    print(
        "  float64 exponential max |CPU - CUDA|:",
        (e - rnd.exponential(k.to(DEV), (999,), torch.float64).cpu()).abs().max().item(),
    )


@section("verify_chain: CPU vs CUDA, compiled vs eager")
def _():
    g = torch.Generator().manual_seed(0)
    b, k, v = 4096, 4, 1000
    p = torch.softmax(torch.randn(b, k + 1, v, generator=g) * 3, -1)
    q = saguaro_q(torch.softmax(torch.randn(b, k, v, generator=g) * 3, -1), 3, 0.5)
    keys = rnd.split(rnd.key(1), b)
    tok = sample(q, rnd.split(rnd.fold_in(keys, 1), k))
    cpu = verify_chain(p, q, tok, keys)
    args = [x.to(DEV) for x in (p, q, tok, keys)]
    gpu = verify_chain(*args)
    comp = torch.compile(verify_chain, fullgraph=True)(*args)
    same = (cpu.next_token == gpu.next_token.cpu()).float().mean().item()
    print(
        f"  next token CPU==CUDA: {same:.5f}; "
        f"accepted equal: {torch.equal(cpu.num_accepted, gpu.num_accepted.cpu())}"
    )
    print(
        f"  compiled==eager on CUDA: {torch.equal(gpu.next_token, comp.next_token)} "
        f"{torch.equal(gpu.num_accepted, comp.num_accepted)}"
    )


TARGET = None


@section("AR on CUDA: eager / compile / cudagraph tokens and decode tok/s vs transformers")
def _():
    global TARGET
    TARGET = random_smollm2(ROOT, LAYERS)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 49152, (2, 64), generator=g).tolist()
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    outs, speed = {}, {}
    for mode in ("eager", "cudagraph", "compile") if DEV == "cuda" else ("eager", "compile"):
        llm = LLM(TARGET, device=DEV, jit=mode, max_batch=1, max_model_len=1024)
        t0 = time.perf_counter()
        outs[mode] = [llm.generate(p, params, use_tqdm=False)[0].token_ids for p in prompts]
        warm = time.perf_counter() - t0
        m = 64
        speed[mode] = [
            (m - 1) * 2 / (time_ssd(llm, prompts, m, 1) - time_ssd(llm, prompts, 1, 1))
            for _ in range(3)
        ]
        print(f"  {mode:<9} first run {warm:5.1f}s  decode tok/s {[round(x) for x in speed[mode]]}")
        del llm
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(TARGET, dtype=torch.bfloat16).to(DEV).eval()
    time_hf(hf, prompts[:1], 4, DEV)
    hf_speed = [
        (64 - 1) * 2 / (time_hf(hf, prompts, 64, DEV) - time_hf(hf, prompts, 1, DEV))
        for _ in range(3)
    ]
    print(f"  transformers decode tok/s {[round(x) for x in hf_speed]}")
    for mode in [m for m in outs if m != "eager"]:
        agree = sum(
            a == b
            for x, y in zip(outs["eager"], outs[mode], strict=True)
            for a, b in zip(x, y, strict=True)
        )
        print(f"  tokens {mode} == eager: {agree}/{sum(map(len, outs['eager']))}")


@section("SD / SSD on CUDA (draft == target, eager): tokens == AR, acceptance, hits, tok/s")
def _():
    target = TARGET or random_smollm2(ROOT, LAYERS)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 49152, (4, 32), generator=g).tolist()
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    ref = None
    for opts in ({}, {"mode": "sd"}, {"mode": "ssd"}, {"mode": "ssd", "draft_process": True}):
        draft = {"draft": target, "k": 4} if opts else {}
        with LLM(
            target, device=DEV, jit="eager", max_batch=4, max_model_len=1024, **draft, **opts
        ) as llm:
            llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
            t0 = time.perf_counter()
            out = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
            dt = time.perf_counter() - t0
            ref = ref or out
            m = llm.metrics or {}
            print(
                f"  {opts or 'ar'!s:<42} equal AR: {out == ref}  tok/s {4 * 48 / dt:6.0f}  "
                f"accept {m.get('acceptance_rate')}  hit {m.get('cache_hit_rate')}"
            )


def main() -> None:
    import transformers

    gpu = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {gpu}")
    for name, f in SECTIONS:
        run_section(name, f)
    print(f"total {time.perf_counter() - START:.0f}s")


if __name__ == "__main__":  # the draft worker process re-imports this file
    main()
