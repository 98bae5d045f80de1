"""Distillation on a tiny random target: records, a few training steps, export and reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM

from ssd import prepare
from ssd.models import load_model
from ssd.prepare import assemble_draft
from ssd.scoring import score
from ssd_tools.distill.data import collate, distill_loss, sampled_distill_loss
from ssd_tools.distill.draft import ffn_importance, init_draft, save_artifact
from ssd_tools.distill.teacher import Job, generate_shards, load_all
from ssd_tools.distill.train import TrainConfig, train


@pytest.fixture(scope="module")
def records(tiny_target: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("teacher")
    g = torch.Generator().manual_seed(1)
    jobs = [
        Job(
            i,
            "toy",
            torch.randint(3, 96, (int(n),), generator=g).tolist(),
            1.0 if i % 2 else 0.0,
            20,
            i,
        )
        for i, n in enumerate(torch.randint(2, 12, (12,), generator=g))
    ]
    generate_shards(
        load_model(tiny_target), jobs, out, batch=4, top_k=16, shard_size=5, progress=False
    )
    return load_all(out)


def test_teacher_records_are_the_target_distribution(tiny_target: Path, records: list) -> None:
    assert [r["index"] for r in records] == list(range(12))
    hf = LlamaForCausalLM.from_pretrained(tiny_target).eval()
    for r in records[:4]:
        t = r["tokens"].long()
        assert r["top_idx"].shape == (len(t) - 1, 16)
        with torch.no_grad():
            lp = torch.log_softmax(hf(t[None, :-1]).logits[0], -1)
        top = lp.topk(16, -1)
        assert torch.equal(top.indices, r["top_idx"].long())
        torch.testing.assert_close(top.values, r["top_lp"], atol=1e-4, rtol=0)
        if r["temperature"] == 0:  # greedy answers follow the recorded argmax
            p = r["prompt_len"]
            assert torch.equal(t[p:], r["top_idx"][p - 1 :, 0].long())


def test_prompt_positions_weigh_prompt_weight(records: list) -> None:
    batch = collate(records[:3], 64, 2, prompt_weight=0.25)
    for b, r in enumerate(records[:3]):
        n, p = len(r["tokens"]) - 1, int(r["prompt_len"])
        want = torch.zeros(batch["mask"].shape[1])
        want[:n] = 1.0
        want[: p - 1] = 0.25  # rows that predict a prompt token
        assert torch.equal(batch["mask"][b], want)


def test_sampled_loss_with_every_token_as_candidate_is_the_weighted_exact_loss(
    tiny_target: Path, records: list
) -> None:
    draft = init_draft(LlamaForCausalLM.from_pretrained(tiny_target), [0, 3])
    batch = collate(records[:4], 64, 2, prompt_weight=0.5)
    sel = batch["mask"] > 0
    # every id is in some position's top-16, so no normalizer mass is left to estimate
    assert torch.unique(batch["top_idx"][sel]).numel() == 96
    with torch.no_grad():
        hidden = draft.model(batch["input_ids"]).last_hidden_state
        exact = distill_loss(
            draft.lm_head(hidden), batch["top_idx"], batch["top_lp"], batch["mask"]
        )
        sampled = sampled_distill_loss(
            hidden[sel],
            draft.lm_head.weight,
            batch["top_idx"][sel],
            batch["top_lp"][sel],
            batch["mask"][sel],
            64,
            torch.Generator().manual_seed(0),
        )
    torch.testing.assert_close(sampled, exact, rtol=1e-5, atol=1e-6)


def test_distillation_reduces_the_loss(tiny_target: Path, records: list, tmp_path: Path) -> None:
    target = LlamaForCausalLM.from_pretrained(tiny_target)
    draft = init_draft(target, [0, 3], frozen=[0])
    batch = collate(records, 64, 2)

    def loss() -> float:
        with torch.no_grad():
            logits = draft(batch["input_ids"]).logits
        return float(distill_loss(logits, batch["top_idx"], batch["top_lp"], batch["mask"]))

    frozen = draft.model.layers[0].self_attn.q_proj.weight.clone()
    before = loss()
    cfg = TrainConfig(
        steps=12, tokens_per_step=256, lr=3e-3, warmup=2, amp=False, eval_every=100, ckpt_every=5
    )
    train(draft, records, records[:2], cfg, tmp_path / "run", progress=False)
    after = loss()
    assert after < 0.8 * before, (before, after)
    assert torch.equal(draft.model.layers[0].self_attn.q_proj.weight, frozen)
    assert draft.model.embed_tokens.weight is target.model.embed_tokens.weight
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 12 and "greedy_rate" in log[-1]


def test_resume_continues_the_same_run(tiny_target: Path, records: list, tmp_path: Path) -> None:
    target = LlamaForCausalLM.from_pretrained(tiny_target)
    cfg = TrainConfig(
        steps=6, tokens_per_step=256, lr=3e-3, warmup=2, amp=False, eval_every=100, ckpt_every=3
    )
    whole = init_draft(target, [0, 3])
    train(whole, records, [], cfg, tmp_path / "a", progress=False)
    half = init_draft(target, [0, 3])
    train(
        half,
        records,
        [],
        TrainConfig(**{**cfg.__dict__, "steps": 3}),
        tmp_path / "b",
        progress=False,
    )
    resumed = init_draft(target, [0, 3])
    train(resumed, records, [], cfg, tmp_path / "b", progress=False)  # restarts from step 3
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("narrow", [False, True], ids=["full FFN", "narrowed FFN"])
def test_saved_draft_reloads_with_identical_logits(
    tiny_target: Path, tmp_path: Path, narrow: bool
) -> None:
    target = LlamaForCausalLM.from_pretrained(tiny_target)
    width = target.config.intermediate_size
    ffn = width // 4 if narrow else None
    calib = [torch.randint(3, 96, (n,), generator=torch.Generator().manual_seed(n)) for n in (7, 9)]
    importance = ffn_importance(target, [0, 2, 3], calib) if narrow else None
    draft = init_draft(target, [0, 2, 3], frozen=[0], ffn=ffn, importance=importance)
    if importance is not None:  # each layer keeps its most important neurons, in order
        keep = importance[2].topk(width // 4).indices.sort().values
        assert torch.equal(
            draft.model.layers[1].mlp.down_proj.weight,
            target.model.layers[2].mlp.down_proj.weight[:, keep],
        )
    with torch.no_grad():  # as if trained, and exactly representable in the stored bf16
        for p in draft.parameters():
            if p.requires_grad:
                p.copy_((p + 0.01).to(torch.bfloat16).float())
    art = save_artifact(draft, [0, 2, 3], [0], tmp_path / "artifact")
    with safe_open(str(art / "weights.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert not any("embed" in n or "layers.0.self_attn" in n for n in stored)
    assert any(n.startswith("model.layers.0.mlp.") for n in stored) == narrow
    hf_dir = assemble_draft(art, tiny_target, tmp_path / "hf")

    tokens = [5, 17, 33, 4, 90, 61, 2, 7, 8]
    x = torch.tensor([tokens])
    with torch.no_grad():
        want = draft.eval()(x).logits[0]
        hf = LlamaForCausalLM.from_pretrained(hf_dir).eval()(x).logits[0]
    m = load_model(hf_dir)
    assert m.cfg.num_hidden_layers == 3
    assert m.cfg.intermediate_size == (ffn or width)
    got = score(m, tokens)
    assert torch.equal(hf, want)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_assemble_refuses_another_target(tiny_target: Path, tmp_path: Path) -> None:
    target = LlamaForCausalLM.from_pretrained(tiny_target)
    art = save_artifact(init_draft(target, [0, 3]), [0, 3], [], tmp_path / "artifact")
    with torch.no_grad():
        target.model.embed_tokens.weight[0, 0] += 1
    target.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="not the one"):
        assemble_draft(art, tmp_path / "other", tmp_path / "hf")


def test_prepare_draft_assembles_once_then_only_reads_the_cache(
    tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = LlamaForCausalLM.from_pretrained(tiny_target)
    art = save_artifact(init_draft(target, [0, 3]), [0, 3], [], tmp_path / "artifact")
    cache = tmp_path / "cache"
    assembled: list[Path] = []

    def counted(artifact_dir: Path, target_dir: Path, out_dir: Path) -> Path:
        assembled.append(out_dir)
        return assemble_draft(artifact_dir, target_dir, out_dir)

    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("a prepared draft must not download, convert or prepare again")

    monkeypatch.setattr(prepare, "assemble_draft", counted)
    monkeypatch.setattr(prepare, "prepare_smollm2", lambda *a, **k: tiny_target)
    first = prepare.prepare_draft(cache, art)
    assert first == cache / prepare.DRAFT_NAME and (first / "model.safetensors").is_file()
    assert assembled == [first]
    for name in ("_pip_download", "_convert", "prepare_smollm2", "prepare_model"):
        monkeypatch.setattr(prepare, name, offline)
    assert prepare.prepare_draft(cache, art) == first
    assert assembled == [first]
    # a changed artifact manifest, or force, assembles again
    monkeypatch.setattr(prepare, "prepare_smollm2", lambda *a, **k: tiny_target)
    manifest = json.loads((art / "draft.json").read_text())
    (art / "draft.json").write_text(json.dumps({**manifest, "note": "retrained"}))
    assert prepare.prepare_draft(cache, art) == first
    assert prepare.prepare_draft(cache, art, force=True) == first
    assert assembled == [first] * 3
