"""The target's own answers and distributions: batched generation that records top-k logits.

Generating is the expensive part of distillation on a CPU, and every generated token already
costs one target forward whose logits are the distillation signal at that position. So we
record the top-k log-probabilities of every forward as we generate: prompt positions come
from the (chunked) prefill, answer positions from the decode steps, and no second teacher
pass is needed. The loop feeds an `ssd.scoring.Scorer` (the functional model on a paged KV
cache: ragged prompts, no padding waste) with light continuous batching: new prompts are
admitted whenever half the batch has finished.

Output: shards `gen-*.pt`, each a list of records {index, category, temperature, tokens
(int32 [T]), prompt_len, top_idx (int32 [T-1, k]), top_lp (float32 [T-1, k])}. Row i is the
target's distribution over token i+1. A shard is written atomically every `shard_size`
finished sequences; a rerun skips the prompts already in a shard (resumable).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ssd import random as rnd
from ssd.config import SamplingParams
from ssd.models import Model
from ssd.sampling import SamplingTensors
from ssd.scoring import Scorer
from ssd.steps import sample_next


@dataclass
class Job:
    index: int
    category: str
    prompt: list[int]
    temperature: float
    max_new: int
    seed: int


@dataclass
class _Seq:
    job: Job
    tokens: list[int]
    row: int = -1  # the scorer's row holding this sequence
    idx: list[torch.Tensor] = field(default_factory=list)
    lp: list[torch.Tensor] = field(default_factory=list)
    done: bool = False


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids and log-probabilities of logits [..., V], without a full log-softmax copy."""
    vals, idx = logits.topk(k, dim=-1)
    return idx.to(torch.int32), (vals - logits.logsumexp(-1, keepdim=True)).float()


def _record(seq: _Seq, logits: torch.Tensor, k: int) -> None:
    idx, lp = topk_logprobs(logits, k)
    seq.idx.append(idx)
    seq.lp.append(lp)


def _finish(seq: _Seq) -> dict[str, Any]:
    """Rows for tokens 1..T-1: the last token's own prediction (after EOS or the length
    limit) is never used, so it is dropped."""
    n = len(seq.tokens) - 1
    return {
        "index": seq.job.index,
        "category": seq.job.category,
        "temperature": seq.job.temperature,
        "prompt_len": len(seq.job.prompt),
        "tokens": torch.tensor(seq.tokens, dtype=torch.int32),
        "top_idx": torch.cat(seq.idx)[:n].clone(),
        "top_lp": torch.cat(seq.lp)[:n].clone(),
    }


class _Generator:
    def __init__(self, model: Model, batch: int, max_len: int, k: int, chunk_tokens: int):
        self.model, self.batch, self.k, self.chunk = model, batch, k, chunk_tokens
        page = 16
        pages = batch * -(-max_len // page) + 1
        self.scorer = Scorer(model, batch, num_pages=pages, page_size=page)
        self.free_rows = list(range(batch))
        self.eos = set(model.cfg.eos_token_ids)

    def _choose(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        """Append each sequence's next token, drawn from last-position logits [B, V] with the
        request's own key at that position (as the engine does), so batching never changes it."""
        chosen = logits.argmax(-1)
        hot = [b for b, s in enumerate(seqs) if s.job.temperature > 0]
        if hot:  # the sampling transform sorts whole rows: run it on the sampled rows only
            sub = [seqs[b] for b in hot]
            st = SamplingTensors.from_params(
                [SamplingParams(temperature=s.job.temperature) for s in sub]
            )
            keys = rnd.key(torch.tensor([s.job.seed for s in sub]))
            pos = torch.tensor([len(s.tokens) for s in sub])
            chosen[hot] = sample_next(logits[hot], st, keys, pos)
        for s, t in zip(seqs, chosen.tolist(), strict=True):
            s.tokens.append(t)
            s.done = t in self.eos or len(s.tokens) - len(s.job.prompt) >= s.job.max_new

    def prefill(self, seqs: list[_Seq]) -> None:
        """Feed prompts in chunks of about `chunk_tokens` padded tokens (bounds the [B, Q, V]
        logits), shortest first so chunks pad little."""
        for s in seqs:
            s.row = self.free_rows.pop()
        done = 0
        while done < len(seqs):
            end = done + 1  # sorted by length: the group's last prompt is its longest
            while end < len(seqs) and (end + 1 - done) * len(seqs[end].job.prompt) <= self.chunk:
                end += 1
            group = seqs[done:end]
            logits = self.scorer.feed_rows([s.row for s in group], [s.job.prompt for s in group])
            last = []
            for b, s in enumerate(group):
                n = len(s.job.prompt)
                _record(s, logits[b, :n], self.k)
                last.append(logits[b, n - 1])
            self._choose(group, torch.stack(last))
            done += len(group)

    def decode(self, seqs: list[_Seq]) -> None:
        rows, feeds = [s.row for s in seqs], [[s.tokens[-1]] for s in seqs]
        logits = self.scorer.feed_rows(rows, feeds)[:, 0]
        for b, s in enumerate(seqs):
            _record(s, logits[b : b + 1], self.k)
        self._choose(seqs, logits)

    def run(self, jobs: Sequence[Job]) -> Iterator[dict[str, Any]]:
        waiting = sorted(jobs, key=lambda j: len(j.prompt))
        active: list[_Seq] = []
        while waiting or active:
            if waiting and len(active) <= self.batch // 2:
                new = [_Seq(j, list(j.prompt)) for j in waiting[: self.batch - len(active)]]
                waiting = waiting[len(new) :]
                with torch.no_grad():
                    self.prefill(new)
                active += new
            else:
                with torch.no_grad():
                    self.decode(active)
            for s in [s for s in active if s.done]:
                active.remove(s)
                self.scorer.reset(s.row)
                self.free_rows.append(s.row)
                yield _finish(s)


def done_indices(out_dir: Path) -> set[int]:
    return {r["index"] for shard in sorted(out_dir.glob("gen-*.pt")) for r in load_shard(shard)}


def load_shard(path: Path) -> list[dict[str, Any]]:
    return list(torch.load(path, weights_only=True))


def load_all(out_dir: Path) -> list[dict[str, Any]]:
    recs = [r for p in sorted(out_dir.glob("gen-*.pt")) for r in load_shard(p)]
    return sorted(recs, key=lambda r: r["index"])


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def generate_shards(
    model: Model,
    jobs: Sequence[Job],
    out_dir: Path,
    *,
    batch: int = 64,
    top_k: int = 64,
    shard_size: int = 64,
    chunk_tokens: int = 2048,
    progress: bool = True,
) -> None:
    """Generate every job not already in a shard of `out_dir`, writing new shards as it goes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    have = done_indices(out_dir)
    todo = [j for j in jobs if j.index not in have]
    if not todo:
        return
    max_len = max(len(j.prompt) + j.max_new for j in todo)
    gen = _Generator(model, batch, max_len, top_k, chunk_tokens)
    n_shards = len(list(out_dir.glob("gen-*.pt")))
    pending: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - len(todo),
        desc="teacher",
        unit="seq",
        disable=not progress,
    )
    for rec in gen.run(todo):
        pending.append(rec)
        bar.update()
        bar.set_postfix(tokens=int(rec["tokens"].numel()))
        if len(pending) >= shard_size:
            _save_atomic(pending, out_dir / f"gen-{n_shards:05d}.pt")
            n_shards, pending = n_shards + 1, []
    if pending:
        _save_atomic(pending, out_dir / f"gen-{n_shards:05d}.pt")
    bar.close()


def continuations(
    model: Model,
    prompts: Sequence[Sequence[int]],
    max_new: int,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    batch: int = 32,
    progress: bool = False,
) -> list[list[int]]:
    """Plain autoregressive answers of `model` (greedy by default), in prompt order."""
    jobs = [
        Job(i, "", list(p), temperature, max_new, seed * 1_000_003 + i)
        for i, p in enumerate(prompts)
    ]
    max_len = max(len(j.prompt) + max_new for j in jobs)
    out: list[list[int]] = [[] for _ in jobs]
    bar = tqdm(total=len(jobs), desc="target AR", unit="seq", disable=not progress)
    for rec in _Generator(model, batch, max_len, 1, 2048).run(jobs):
        out[rec["index"]] = rec["tokens"][rec["prompt_len"] :].tolist()
        bar.update()
    bar.close()
    return out
