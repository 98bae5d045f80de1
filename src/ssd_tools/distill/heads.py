"""Which of the target's layers copy: previous-token and induction scores of every head.

Small chat models copy a lot from their context (extraction, summarization, RAG, and a
135M model's "translations"), and a draft that cannot copy misses all of it. Copying is a
two-layer circuit: a previous-token head writes "the token before me" into the residual
stream, and a later induction head attends to the position right after an earlier occurrence
of the current token. We find both by feeding a random token sequence twice: in the second
copy, a previous-token head attends from position i to i - 1, an induction head to i - n + 1.
The draft's layers are chosen from these scores (docs/draft.md).

    python -m ssd_tools.distill.heads [target_dir]    # default: the prepared SmolLM2-135M-Instruct
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM


@torch.no_grad()
def head_scores(
    model: Any, n: int = 50, batch: int = 4, seed: int = 0, low: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous-token, induction) attention weight per [layer, head], averaged over the second
    copy of `batch` random sequences of `n` token ids from [low, vocab)."""
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(low, vocab, (batch, n), generator=g)
    out = model(torch.cat([x, x], 1), output_attentions=True)
    q = torch.arange(n + 1, 2 * n)
    prev = torch.stack([a[:, :, q, q - 1].mean((0, 2)) for a in out.attentions])
    induction = torch.stack([a[:, :, q, q - n + 1].mean((0, 2)) for a in out.attentions])
    return prev, induction


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        path = Path(args[0])
    else:
        from ssd.prepare import prepare_smollm2

        path = prepare_smollm2(progress=False)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    prev, ind = head_scores(model)
    print("layer  best previous-token head  best induction head")
    for layer, (p, i) in enumerate(zip(prev.max(1).values, ind.max(1).values, strict=True)):
        print(f"{layer:5d}  {float(p):24.2f}  {float(i):19.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
