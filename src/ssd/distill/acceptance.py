"""Reference speculative-decoding simulator: measures the acceptance of a target/draft pair.

`simulate` runs real SD rounds on the `ssd` functional models with paged KV caches: the draft
samples K tokens from its q (`ssd.sampling.sample`), the target scores [r, s_1..s_K] in one
forward, and `ssd.sampling.verify_chain` decides (k, t*) exactly as the engine will. At
temperature 0 both q and p are one-hot, so this is greedy SD and the committed tokens are the
target's greedy continuation. It is written for clarity, not speed (the engine's SD driver is
meant to be checked against it): sequences run in lock-step batches, the draft catches up on
the tokens it has not seen at the start of each round, and rejected KV is simply overwritten.

`greedy_matches` + `stats.rounds_from_matches` is the cheap equivalent at temperature 0 for
any K: one teacher-forced draft pass over the target's greedy continuation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ssd import random as rnd
from ssd.config import SamplingParams
from ssd.distill.stats import AcceptanceStats
from ssd.kv import KVCache, PageAllocator, alloc_kv_cache, pack_tokens, step_meta
from ssd.models import Model, forward
from ssd.sampling import SamplingTensors, probs_from_logits, sample, verify_chain


@dataclass
class _Seq:
    prompt: list[int]
    key: torch.Tensor  # [2]
    out: list[int] = field(default_factory=list)
    draft_len: int = 0  # tokens of prompt + out whose KV the draft cache holds
    done: bool = False

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out


class _Cache:
    """One model's paged KV for a batch of sequences (one table per sequence)."""

    def __init__(self, model: Model, n_seqs: int, max_len: int, page: int = 16):
        pages = n_seqs * -(-max_len // page)
        self.model, self.page = model, page
        self.kv: KVCache = alloc_kv_cache(model.cfg, pages, page, dtype=model.params.embed.dtype)
        alloc = PageAllocator(pages, page)
        self.tables = [alloc.ensure([], max_len) for _ in range(n_seqs)]

    def run(
        self, rows: Sequence[int], starts: Sequence[int], feeds: Sequence[list[int]]
    ) -> torch.Tensor:
        """Feed `feeds[b]` at positions `starts[b]...` for sequence rows[b]; logits [B, Q, V]."""
        meta = step_meta([self.tables[r] for r in rows], starts, [len(f) for f in feeds], self.page)
        logits, self.kv = forward(
            self.model.params, self.model.cfg, self.kv, pack_tokens(feeds), meta
        )
        return logits

    def prefill(self, rows: Sequence[int], seqs: Sequence[list[int]], budget: int = 2048) -> None:
        """Write the KV of `seqs` from position 0, a few sequences per forward (bounds the
        [B, Q, V] logits we do not need)."""
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and (j + 1 - i) * max(len(s) for s in seqs[i : j + 1]) <= budget:
                j += 1
            self.run(rows[i:j], [0] * (j - i), list(seqs[i:j]))
            i = j


def _round(
    target: _Cache,
    draft: _Cache,
    seqs: list[_Seq],
    rows: list[int],
    k: int,
    st: SamplingTensors,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SD round for the active rows: returns (drafts [B, K], accepted [B], next [B])."""
    b = len(rows)
    base = rnd.fold_in(
        torch.stack([seqs[r].key for r in rows]), torch.tensor([len(seqs[r].tokens) for r in rows])
    )
    drafts, qs = [], []
    feeds = [seqs[r].tokens[seqs[r].draft_len :] for r in rows]
    starts = [seqs[r].draft_len for r in rows]
    for j in range(k):
        logits = draft.run(rows, starts, feeds)
        last = logits[torch.arange(b), torch.tensor([len(f) - 1 for f in feeds])]
        q = probs_from_logits(last, st)
        s = sample(q, rnd.fold_in(base, 1 + j))
        drafts.append(s)
        qs.append(q)
        starts = [st_ + len(f) for st_, f in zip(starts, feeds, strict=True)]
        feeds = [[t] for t in s.tolist()]
    tok = torch.stack(drafts, 1)
    r_feed = [[seqs[r].tokens[-1], *tok[i].tolist()] for i, r in enumerate(rows)]
    p_logits = target.run(rows, [len(seqs[r].tokens) - 1 for r in rows], r_feed)
    p = probs_from_logits(p_logits, st)
    v = verify_chain(p, torch.stack(qs, 1), tok, rnd.fold_in(base, 0))
    return tok, v.num_accepted, v.next_token


Result = tuple[list[AcceptanceStats], list[list[int]]]


def _run_rounds(
    tc: _Cache,
    dc: _Cache,
    seqs: list[_Seq],
    k: int,
    temperature: float,
    max_new: int,
    eos: set[int],
) -> list[AcceptanceStats]:
    """SD rounds until every sequence of the batch stops; per-sequence stats."""
    stats = [AcceptanceStats(k) for _ in seqs]
    rows = list(range(len(seqs)))
    params = SamplingParams(temperature=temperature)
    while rows:
        sub = SamplingTensors.from_params(params, len(rows))
        tok, acc, nxt = _round(tc, dc, seqs, rows, k, sub)
        for i, r in enumerate(rows):
            s, n = seqs[r], int(acc[i])
            before = len(s.tokens)
            for t in [*tok[i, :n].tolist(), int(nxt[i])]:
                s.out.append(t)
                if t in eos or len(s.out) >= max_new:
                    s.done = True
                    break
            committed = len(s.tokens) - before
            stats[r].add_round(min(n, committed), committed)
            s.draft_len = before + min(n, k - 1)
        rows = [r for r in rows if not seqs[r].done]
    return stats


@torch.no_grad()
def simulate_ks(
    target: Model,
    draft: Model,
    prompts: Sequence[Sequence[int]],
    ks: Sequence[int],
    temperature: float,
    max_new_tokens: int,
    *,
    seed: int = 0,
    batch: int = 16,
    eos_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[int, Result]:
    """:func:`simulate` for several K, prefilling each batch of prompts once (the prompt KV is
    copied for each K: on long prompts the prefill costs more than the rounds)."""
    eos = set(target.cfg.eos_token_ids if eos_ids is None else eos_ids)
    res: dict[int, Result] = {
        k: ([AcceptanceStats(k) for _ in prompts], [[] for _ in prompts]) for k in ks
    }
    bar = tqdm(total=len(prompts) * len(ks), desc=f"SD T={temperature:g}", disable=not progress)
    for lo in range(0, len(prompts), batch):
        ids = list(range(lo, min(lo + batch, len(prompts))))
        if any(len(prompts[i]) == 0 for i in ids):
            raise ValueError("every prompt needs at least one token")
        max_len = max(len(prompts[i]) for i in ids) + max_new_tokens + max(ks) + 2
        tc, dc = _Cache(target, len(ids), max_len), _Cache(draft, len(ids), max_len)
        pre = [r for r, i in enumerate(ids) if len(prompts[i]) > 1]  # r is fed by the round
        for cache in (tc, dc):
            cache.prefill(pre, [list(prompts[ids[r]][:-1]) for r in pre])
        saved = [(c.kv.k_pages.clone(), c.kv.v_pages.clone()) for c in (tc, dc)]
        for k in ks:
            for c, (kp, vp) in zip((tc, dc), saved, strict=True):
                c.kv = KVCache(kp.clone(), vp.clone())
            seqs = [
                _Seq(list(prompts[i]), rnd.key(seed * 1_000_003 + i), draft_len=len(prompts[i]) - 1)
                for i in ids
            ]
            stats = _run_rounds(tc, dc, seqs, k, temperature, max_new_tokens, eos)
            for r, i in enumerate(ids):
                res[k][0][i], res[k][1][i] = stats[r], seqs[r].out
            bar.update(len(ids))
    bar.close()
    return res


def simulate(
    target: Model,
    draft: Model,
    prompts: Sequence[Sequence[int]],
    k: int,
    temperature: float,
    max_new_tokens: int,
    *,
    seed: int = 0,
    batch: int = 16,
    eos_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> Result:
    """Speculative decoding of every prompt; per-prompt acceptance stats and generated tokens.

    Prompt i uses the key `key(seed * 1_000_003 + i)` folded with the position of each round,
    so its result does not depend on the batch it ran in. Stops at EOS or `max_new_tokens`;
    a round cut short there counts only the tokens before the stop (DESIGN.md §6).
    """
    return simulate_ks(
        target,
        draft,
        prompts,
        [k],
        temperature,
        max_new_tokens,
        seed=seed,
        batch=batch,
        eos_ids=eos_ids,
        progress=progress,
    )[k]


@torch.no_grad()
def greedy_matches(draft: Model, prompt: Sequence[int], continuation: Sequence[int]) -> list[bool]:
    """matches[i]: the draft's argmax after prompt + continuation[:i] is continuation[i]."""
    seq = list(prompt) + list(continuation)
    cache = _Cache(draft, 1, len(seq))
    logits = cache.run([0], [0], [seq[:-1]])[0]
    pred = logits[len(prompt) - 1 :].argmax(-1).tolist()
    return [p == t for p, t in zip(pred, continuation, strict=True)]
