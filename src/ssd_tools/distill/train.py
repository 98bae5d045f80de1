"""The distillation loop: fit the draft to the target's recorded top-k distributions.

Resumable: a checkpoint (trainable weights, optimizer, step) is written atomically every
`ckpt_every` steps, and the batch sequence is a pure function of (data, seed), so a resumed
run continues exactly where the interrupted one stopped. Held-out acceptance (the number that
matters) is logged as training goes, to `log.jsonl` in the run directory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import LlamaForCausalLM

from ssd.engine.metrics import AcceptanceStats, merge_all
from ssd_tools.distill.acceptance import rounds_from_matches
from ssd_tools.distill.data import (
    Record,
    collate,
    distill_loss,
    example_length,
    overlap,
    plan,
    sampled_distill_loss,
)


@dataclass
class TrainConfig:
    steps: int = 1000
    tokens_per_step: int = 2048
    max_len: int = 1024
    lr: float = 4e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    seed: int = 0
    amp: bool = True  # bf16 autocast for the forward; the loss is computed in fp32
    eval_every: int = 100
    ckpt_every: int = 25
    pad_id: int = 2
    k_eval: int = 4
    negatives: int = 2048  # sampled-softmax draws per step; 0 = full softmax (3x slower)
    prompt_weight: float = 1.0  # loss weight of prompt positions (answers weigh 1)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _autocast(enabled: bool) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else nullcontext()


@torch.no_grad()
def evaluate_heldout(draft: LlamaForCausalLM, recs: Sequence[Record], k: int) -> dict[str, Any]:
    """Teacher-forced draft on held-out target sequences (fp32, as deployed).

    Greedy records give the greedy acceptance over the answer (see `rounds_from_matches`);
    every record gives the mean KL and the top-k overlap Σ min(p, q) over answer positions.
    """
    draft.eval()
    greedy: list[AcceptanceStats] = []
    kl_sum = ov_sum = n_pos = 0.0
    for r in recs:
        ids = r["tokens"].long()
        logits = draft(ids[None, :-1]).logits[0]
        start = int(r["prompt_len"]) - 1  # row predicting the first answer token
        idx, lp = r["top_idx"][start:].long(), r["top_lp"][start:]
        ans = logits[start:]
        mask = torch.ones(ans.shape[0])
        kl_sum += float(distill_loss(ans[None], idx[None], lp[None], mask[None])) * len(mask)
        ov_sum += float(overlap(ans, idx, lp).sum())
        n_pos += len(mask)
        if r["temperature"] == 0:
            matches = (ans.argmax(-1) == ids[start + 1 :]).tolist()
            greedy.append(rounds_from_matches(matches, k))
    draft.train()
    g = merge_all(greedy, k)
    return {
        "kl": kl_sum / max(n_pos, 1),
        "overlap": ov_sum / max(n_pos, 1),
        "greedy_rate": g.rate,
        "greedy_tau": g.tau,
    }


def _save_ckpt(path: Path, draft: LlamaForCausalLM, opt: torch.optim.Optimizer, step: int) -> None:
    trainable = {n: p.detach() for n, p in draft.named_parameters() if p.requires_grad}
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "params": trainable, "opt": opt.state_dict()}, tmp)
    os.replace(tmp, path)


def _load_ckpt(path: Path, draft: LlamaForCausalLM, opt: torch.optim.Optimizer) -> int:
    ck = torch.load(path, weights_only=True)
    _copy_params(draft, ck["params"])
    opt.load_state_dict(ck["opt"])
    return int(ck["step"])


def train(
    draft: LlamaForCausalLM,
    records: Sequence[Record],
    heldout: Sequence[Record],
    cfg: TrainConfig,
    run_dir: Path,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train in place (resuming from `run_dir/ckpt.pt` if present); returns the log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ckpt, log_path = run_dir / "ckpt.pt", run_dir / "log.jsonl"
    start = _load_ckpt(ckpt, draft, opt) if ckpt.exists() else 0
    if start == 0:
        log_path.write_text(json.dumps({"config": asdict(cfg)}) + "\n")
    lengths = [example_length(r, cfg.max_len) for r in records]
    batches = plan(lengths, cfg.tokens_per_step, cfg.seed, cfg.steps)
    log: list[dict[str, Any]] = []
    draft.train()
    bar = tqdm(total=cfg.steps, initial=start, desc="distill", unit="step", disable=not progress)
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        if step % cfg.eval_every == 0 and heldout:
            log.append(_checkpoint_eval(draft, heldout, cfg, run_dir, step))
        batch = collate(
            [records[i] for i in batches[step]], cfg.max_len, cfg.pad_id, cfg.prompt_weight
        )
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        if cfg.negatives:
            with _autocast(cfg.amp):
                hidden = draft.model(batch["input_ids"]).last_hidden_state
            sel = batch["mask"] > 0
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            loss = sampled_distill_loss(
                hidden[sel].float(),
                draft.lm_head.weight,
                batch["top_idx"][sel],
                batch["top_lp"][sel],
                batch["mask"][sel],
                cfg.negatives,
                gen,
            )
        else:
            with _autocast(cfg.amp):
                logits = draft(batch["input_ids"]).logits
            loss = distill_loss(logits, batch["top_idx"], batch["top_lp"], batch["mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}", tok=int((batch["mask"] > 0).sum()))
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            _save_ckpt(ckpt, draft, opt, step + 1)
            with log_path.open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": step + 1,
                            "loss": loss.item(),
                            "elapsed_s": time.perf_counter() - t0,
                        }
                    )
                    + "\n"
                )
    bar.close()
    if heldout:
        log.append(_checkpoint_eval(draft, heldout, cfg, run_dir, cfg.steps))
        best = torch.load(run_dir / "best.pt", weights_only=True)
        _copy_params(draft, best["params"])
        tqdm.write(f"keeping step {best['step']} (held-out greedy rate {best['rate']:.4f})")
    return log


def _copy_params(draft: LlamaForCausalLM, saved: dict[str, torch.Tensor]) -> None:
    params = dict(draft.named_parameters())
    with torch.no_grad():
        for n, t in saved.items():
            params[n].copy_(t)


def _checkpoint_eval(
    draft: LlamaForCausalLM, heldout: Sequence[Record], cfg: TrainConfig, run_dir: Path, step: int
) -> dict[str, Any]:
    """Log held-out figures; keep the weights with the best held-out greedy acceptance in
    `best.pt` (a small held-out set, but it guards against over-fitting the few answers we
    can afford to generate on a CPU)."""
    entry = {"step": step, **evaluate_heldout(draft, heldout, cfg.k_eval)}
    with (run_dir / "log.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")
    tqdm.write(json.dumps(entry))
    path = run_dir / "best.pt"
    best = torch.load(path, weights_only=True)["rate"] if path.exists() else -1.0
    if entry["greedy_rate"] > best:
        params = {n: p.detach() for n, p in draft.named_parameters() if p.requires_grad}
        torch.save(
            {"step": step, "rate": entry["greedy_rate"], "params": params}, path.with_suffix(".tmp")
        )
        os.replace(path.with_suffix(".tmp"), path)
    return entry
