"""The head scores that pick the draft's layers, on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from ssd.prepare import prepare_smollm2
from ssd_tools.distill.heads import head_scores


def test_copying_heads_sit_in_the_middle_layers() -> None:
    model = AutoModelForCausalLM.from_pretrained(
        prepare_smollm2(progress=False), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    prev, induction = head_scores(model)
    best_ind, best_prev = induction.max(1).values, prev.max(1).values
    assert best_ind[17] > 0.5 and best_ind[18] > 0.5  # induction heads
    assert best_ind[:14].max() < 0.1  # none in the early layers
    assert best_prev[16] > 0.5  # a previous-token head feeding them
    # scores are attention weights: a random offset gets about 1/context of them
    assert induction.min() >= 0 and best_ind.mean() < 0.5
