"""Speculative decoding for one sequence, written directly on ssd's step functions.

A research loop in a page: change how `draft_step` proposes (or replace it with any proposal
and its q rows, or point masses) and the verification keeps the output law the target's.
Each step is wrapped in `Step(fn, donate=2)`, which marks the KV cache it writes in place as
consumed: feeding a stale cache to a later step raises `StaleStateError` instead of reading
overwritten pages.
Run: python docs/examples/sd_loop.py TARGET_DIR DRAFT_DIR
"""

from __future__ import annotations

import sys

import torch

from ssd import SamplingParams, steps
from ssd import random as rnd
from ssd.jit import Step
from ssd.kv import PageAllocator, alloc_kv_cache, pack_tokens, step_meta
from ssd.models import load_model
from ssd.sampling import SamplingTensors

prefill_step, glue_step, draft_step, verify_step = (
    Step(fn, donate=2)  # argument 2, the KV cache, is consumed by each call
    for fn in (steps.prefill_step, steps.glue_step, steps.draft_step, steps.verify_step)
)


def speculative_generate(target_dir, draft_dir, prompt, n, params, k=4, seed=0):
    target, draft = load_model(target_dir), load_model(draft_dir)
    page, room = 16, len(prompt) + n + k + 1
    kv_t = alloc_kv_cache(target.cfg, -(-room // page), page)
    kv_d = alloc_kv_cache(draft.cfg, -(-room // page), page)
    table = PageAllocator(kv_t.num_pages, page).ensure([], room)  # same page layout for both
    st = SamplingTensors.from_params([params])
    key = rnd.key(torch.tensor([seed]))

    def meta(start, length):  # `length` tokens at positions start..start+length-1
        return step_meta([table], [start], [length], page)

    # Prefill both models on the prompt; the target samples the first token r.
    p = len(prompt)
    tokens = pack_tokens([prompt])
    kv_t, first = prefill_step(
        target.params, target.cfg, kv_t, tokens, meta(0, p), torch.tensor([p - 1]), st, key
    )
    kv_d, _ = glue_step(draft.params, draft.cfg, kv_d, tokens, meta(0, p))
    seq = [*prompt, int(first)]
    while len(seq) - p < n:
        last = len(seq) - 1  # position of r, the last token (its target KV is not written yet)
        # Draft K tokens and the rows q they were drawn from.
        metas = [meta(last - 1, 2)] + [meta(last + d, 1) for d in range(1, k)]
        tokens0 = torch.tensor([seq[-2:]])
        kv_d, drafts, q, _, _ = draft_step(draft.params, draft.cfg, kv_d, tokens0, metas, st, key)
        # The target verifies [r, s_1..s_K] in one forward and draws the next token.
        path = torch.cat([torch.tensor([[seq[-1]]]), drafts], 1)
        kv_t, out = verify_step(
            target.params, target.cfg, kv_t, path, meta(last, k + 1), q, None, st, key
        )
        accepted = int(out.num_accepted)
        seq += [*drafts[0, :accepted].tolist(), int(out.next_token)]
    return seq[p : p + n]


if __name__ == "__main__":
    greedy = SamplingParams(temperature=0)
    print(speculative_generate(sys.argv[1], sys.argv[2], [1, 2, 3, 4], 32, greedy))
