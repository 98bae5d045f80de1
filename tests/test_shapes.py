"""The jaxtyping shapes in the step and sampling signatures, checked at run time on eager calls.

Every step the engine runs is swapped for a shape-checked wrapper (jaxtyping + beartype) before
the engine builds its `Step`s, then SD and SSD generate at temperature > 0 and greedily, so
each annotated function sees real inputs. Checking stays out of compiled code: the wrappers
exist only here.
"""

from __future__ import annotations

import pytest
import torch
from beartype import beartype
from jaxtyping import TypeCheckError, jaxtyped

import ssd.engine.draft_model
import ssd.engine.target
import ssd.steps
from helpers import random_tokens
from ssd import LLM, SamplingParams
from ssd import random as rnd
from ssd.sampling import verify_chain

STEPS = {
    ssd.engine.target: ["decode_step", "verify_step"],
    ssd.engine.draft_model: ["fill_step", "draft_step", "glue_step", "tree_step", "move_step"],
    ssd.steps: ["probs_from_logits", "verify_chain", "draw", "sample", "saguaro_q"],
}


def _checked(fn):
    return jaxtyped(typechecker=beartype)(fn)


@pytest.mark.parametrize("mode", ["sd", "ssd"])
def test_every_step_meets_its_annotated_shapes(mode, checkpoints, monkeypatch):
    calls: dict[str, int] = {}
    for module, names in STEPS.items():
        for name in names:
            checked = _checked(getattr(module, name))

            def counted(*args, _f=checked, _n=name, **kwargs):
                calls[_n] = calls.get(_n, 0) + 1
                return _f(*args, **kwargs)

            counted.__name__ = name
            monkeypatch.setattr(module, name, counted)
    path = checkpoints["qwen2"]
    prompts = [random_tokens(n, seed=n) for n in (4, 9, 6)]
    # SSD: a round that hits everywhere moves its branch's KV home; after an n-gram guess (the
    # fast backup) a glue pass computes the glue
    for backup in ["neural", "fast"] if mode == "ssd" else [None]:
        options = {"backup": backup} if backup else {}
        llm = LLM(path, draft=path, mode=mode, k=3, max_batch=4, **options)
        for t in (0.0, 0.8):
            params = SamplingParams(temperature=t, max_tokens=12, seed=3, ignore_eos=True)
            llm.generate(prompts, params, use_tqdm=False)
    expected = {"decode_step", "fill_step", "verify_step", "probs_from_logits", "verify_chain"}
    expected |= {"draft_step"} if mode == "sd" else {"glue_step", "tree_step", "move_step"}
    assert expected <= set(calls), sorted(calls)


def test_a_wrong_shape_is_named_before_the_body_runs():
    p = torch.softmax(torch.randn(2, 4, 10), -1)
    q = torch.softmax(torch.randn(2, 3, 11), -1)  # V = 11 against p's 10
    tokens = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(TypeCheckError, match="V"):
        _checked(verify_chain)(p, q, tokens, rnd.key(torch.tensor([1, 2])))
