"""The draft in its own process (shared-memory mailboxes, pinned to its own core): the same
tokens as one process, and every request finished when that process dies or hangs.

Every test has a timeout, and faulthandler dumps all stacks on a hang (pytest's
faulthandler_timeout).
"""

from __future__ import annotations

import os
import signal

import pytest

from helpers import hf_greedy
from ssd import LLM, SamplingParams

PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [200, 1], [7, 7, 7, 7, 30, 31, 32, 33, 34, 35, 36, 90], [64]]
GREEDY = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "options",
    [
        {"mode": "sd", "k": 3},
        {"mode": "ssd", "k": 3, "backup": "neural"},
        {"mode": "ssd", "k": 4, "backup": "fast", "saguaro_c": 0.5},
    ],
)
@pytest.mark.parametrize(
    ("target_name", "draft_name"),
    [("llama", "llama_bias_gqa2"), ("qwen3_tied", "llama3_scaled_gqa4_tied")],
)
def test_greedy_in_two_processes_equals_transformers(options, target_name, draft_name, checkpoints):
    target, draft = checkpoints[target_name], checkpoints[draft_name]
    want = [hf_greedy(target, p, 64) for p in PROMPTS]
    with LLM(target, draft=draft, max_batch=4, draft_process=True, **options) as llm:
        batch = [o.token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
        single = llm.generate(PROMPTS[1], GREEDY, use_tqdm=False)[0].token_ids
        metrics = llm.metrics
    assert batch == want and single == want[1]
    assert metrics is not None and metrics["rounds"] > 0


@pytest.mark.timeout(240)
def test_sampled_tokens_match_the_single_process_engine(checkpoints):
    """Same seeds, same drafts, same coins: two processes give the one-process tokens."""
    target = checkpoints["qwen3_tied"]
    params = [SamplingParams(temperature=1.0, top_p=0.95, seed=s, max_tokens=20) for s in range(4)]
    options = {"mode": "ssd", "k": 3, "backup": "neural", "saguaro_c": 0.5, "max_batch": 4}
    local = LLM(target, draft=target, **options).generate(PROMPTS, params, use_tqdm=False)
    # Two engines with draft processes at once, in one process: private groups, no fixed port.
    cores = sorted(os.sched_getaffinity(0))
    with (
        LLM(target, draft=target, draft_process=True, **options) as one,
        LLM(target, draft=target, draft_process=True, **options) as two,
    ):
        remote = one.generate(PROMPTS, params, use_tqdm=False)
        other = two.generate(PROMPTS, params, use_tqdm=False)
        workers = [one.runner.drafter.proc, two.runner.drafter.proc]
        # Each draft on the last core, the target on the others: the second engine splits the
        # process's cores as they were before the first narrowed them.
        held = [os.sched_getaffinity(0), *(os.sched_getaffinity(w.pid) for w in workers)]
        one.close()
        still = os.sched_getaffinity(0)  # the other engine still runs beside its draft
    assert [o.token_ids for o in remote] == [o.token_ids for o in local]
    assert [o.token_ids for o in other] == [o.token_ids for o in local]
    assert not any(w.is_alive() for w in workers)  # closing stops the workers
    if len(cores) >= 2:
        assert held == [set(cores[:-1]), {cores[-1]}, {cores[-1]}]
        assert still == set(cores[:-1])
    assert sorted(os.sched_getaffinity(0)) == cores  # the last to close gives them back


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_requests_survive_a_failed_draft_process(fault, checkpoints, caplog):
    """The draft process dies (SIGKILL) or stops answering (SIGSTOP, past the timeout) after
    a few rounds: every request, running or waiting, still gets its greedy tokens, in SD with
    the draft in this process; the failure shows in the metrics and the log, and the worker
    is gone. Later calls run on the in-process draft."""
    target, draft = checkpoints["llama"], checkpoints["llama_bias_gqa2"]
    want = [hf_greedy(target, p, 64) for p in PROMPTS]
    signum = signal.SIGKILL if fault == "kill" else signal.SIGSTOP
    options = {"mode": "ssd", "k": 3, "max_batch": 2, "draft_timeout_s": 5.0}
    with LLM(target, draft=draft, draft_process=True, **options) as llm:
        proc = llm.runner.drafter.proc
        tokens: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}
        for n, out in enumerate(llm.generate_stream(PROMPTS, GREEDY)):  # 2 run, 2 wait
            tokens[out.request_id] += out.new_token_ids
            if n == 6:
                os.kill(proc.pid, signum)
        metrics = llm.metrics
        assert not proc.is_alive()
        again = llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
    assert [tokens[i] for i in range(len(PROMPTS))] == want
    assert metrics is not None and metrics["draft_failures"] == 1
    assert "in-process draft" in caplog.text
    assert [o.token_ids for o in again] == want[:2]


def test_the_worker_widens_to_every_core_once_the_next_message_is_sent(monkeypatch):
    """Between draft passes the worker sees in the shared mailbox that the target's next message
    has been written (the target waits), and takes every core for the rest of the preparation,
    once."""
    from ssd.engine import remote
    from ssd.engine.mailbox import Mailbox, Waiter

    widened = []
    monkeypatch.setattr(remote, "_use_cores", widened.append)
    block = Mailbox.allocate(1024)
    target, worker = Mailbox(block), Mailbox(block)
    wait = Waiter(timeout_s=5)
    target.send({"cmd": "spec"}, [], wait)
    incoming = remote._Incoming(worker, wait, widen_to={0, 1})
    assert incoming.read() == {"cmd": "spec"}
    incoming.poll()
    assert widened == []  # the next message not written yet: the draft keeps to its own core
    target.send({"cmd": "spec"}, [], wait)
    incoming.poll()
    incoming.poll()
    assert widened == [{0, 1}]
