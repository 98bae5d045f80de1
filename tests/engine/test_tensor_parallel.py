"""A tensor-parallel target (two gloo ranks on CPU) in the engine: AR, SD and SSD give the
tokens of one process, greedy and seeded; the draft keeps its own process (three in all).

Each test spawns processes: it has a timeout, and faulthandler dumps every stack on a hang
(pytest's faulthandler_timeout), since a collective one rank never reaches blocks.
"""

from __future__ import annotations

import pytest

from helpers import hf_greedy
from ssd import LLM, SamplingParams

PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [200, 1], [7, 7, 7, 7, 30, 31, 32, 33, 34, 35, 36, 90]]
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("target_name", "options"),
    [
        ("llama_bias_gqa2", {"mode": "ar", "prefix_caching": True}),
        # one kv head on two ranks: replicated
        ("llama3_scaled_gqa4_tied", {"mode": "sd", "k": 3}),
        ("qwen2", {"mode": "ssd", "k": 3, "draft_process": True, "saguaro_c": 0.5}),
        ("qwen3_tied", {"mode": "sd", "k": 4, "draft_process": True}),
    ],
)
def test_greedy_tokens_of_a_two_rank_target_equal_transformers(target_name, options, checkpoints):
    target = checkpoints[target_name]
    draft = None if options["mode"] == "ar" else checkpoints["llama"]
    want = [hf_greedy(target, p, GREEDY.max_tokens) for p in PROMPTS]
    with LLM(target, draft=draft, max_batch=2, page_size=4, tensor_parallel=2, **options) as llm:
        got = [o.token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
        again = llm.generate(PROMPTS[2], GREEDY, use_tqdm=False)[0].token_ids
        ranks = llm._mesh.procs
    assert got == want and again == want[2]
    assert not any(p.is_alive() for p in ranks)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["ar", "ssd"])
def test_seeded_tokens_of_a_two_rank_target_equal_one_rank(mode, checkpoints):
    target = checkpoints["qwen2"]
    draft = None if mode == "ar" else checkpoints["qwen3_tied"]
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=s, max_tokens=24) for s in range(3)]
    options = {"mode": mode, "draft": draft, "max_batch": 2}
    one = [o.token_ids for o in LLM(target, **options).generate(PROMPTS, params, use_tqdm=False)]
    with LLM(target, tensor_parallel=2, **options) as llm:
        two = [o.token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    assert two == one


def test_a_target_that_does_not_split_is_refused_before_loading(checkpoints, monkeypatch):
    import ssd.llm

    monkeypatch.setattr(ssd.llm, "load_model", None)  # any load would fail loudly
    with pytest.raises(ValueError, match="4 attention heads do not split over 3"):
        LLM(checkpoints["llama"], tensor_parallel=3)
    with pytest.raises(ValueError, match="tensor_parallel must be an integer"):
        LLM(checkpoints["llama"], tensor_parallel=2.5)


TORCHRUN_SCRIPT = """
import json, sys
from ssd import LLM, SamplingParams
path, prompts = sys.argv[1], json.loads(sys.argv[2])
with LLM(path, tensor_parallel=2, max_batch=2) as llm:  # ranks other than 0 serve here, then exit
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
                        use_tqdm=False)
print("TOKENS", json.dumps([o.token_ids for o in outs]))
"""


@pytest.mark.timeout(300)
def test_a_torchrun_launch_serves_from_rank_zero(checkpoints, tmp_path):
    """`torchrun --nproc-per-node 2 script.py`: every process runs the script; rank 1 serves
    rank 0 inside `LLM(...)` and exits, so only rank 0 prints; tokens equal transformers'."""
    import json
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    target = checkpoints["qwen2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(script), str(target), json.dumps(PROMPTS)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("TOKENS")]
    assert len(lines) == 1  # rank 1 left inside LLM(...)
    assert json.loads(lines[0][len("TOKENS ") :]) == [hf_greedy(target, p, 24) for p in PROMPTS]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "options",
    [
        # the draft's two ranks spawned by this process, the target in one
        {"mode": "sd", "k": 3, "draft_tensor_parallel": 2},
        # a two-rank target and a two-rank int8 draft in its own process: four processes
        {
            "mode": "ssd",
            "k": 3,
            "tensor_parallel": 2,
            "draft_tensor_parallel": 2,
            "draft_process": True,
            "draft_dtype": "int8",
        },
    ],
)
def test_a_sharded_draft_gives_the_target_tokens(options, checkpoints):
    """The draft is the target itself: a sharded draft that computed anything else would show
    in the acceptance (tokens stay right whatever the draft proposes)."""
    target = checkpoints["qwen2"]
    want = [hf_greedy(target, p, GREEDY.max_tokens) for p in PROMPTS]
    with LLM(target, draft=target, max_batch=2, **options) as llm:
        got = [o.token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
        metrics = llm.metrics
    assert got == want
    floor = 0.6 if options.get("draft_dtype") == "int8" else 0.95
    assert metrics["draft_failures"] == 0 and metrics["acceptance_rate"] >= floor


@pytest.mark.timeout(120)
def test_a_dead_rank_is_an_error_not_a_hang(checkpoints):
    """A target rank that dies cannot be replaced (its shard is gone): the next step fails
    with RuntimeError instead of waiting forever, and closing still works, freeing the group's
    name for a later group whose store gets the same port."""
    import os
    import signal

    import torch

    target = checkpoints["qwen2"]
    llm = LLM(target, max_batch=2, tensor_parallel=2)
    assert llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].finish_reason == "length"
    os.kill(llm._mesh.procs[0].pid, signal.SIGKILL)
    llm._mesh.procs[0].join()
    with pytest.raises(RuntimeError, match="a tensor-parallel rank of this model failed"):
        llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)
    name = llm._mesh.group.name
    llm.close()
    with pytest.raises(RuntimeError):  # no group left under the name
        torch._C._distributed_c10d._resolve_process_group(name)
