"""Tensor parallelism: the sharding rules split every weight so that the shards put back together
are the model, and two gloo ranks give the logits of one process (fp32, to rounding).

The two-rank test spawns processes: it has a timeout, and faulthandler dumps every stack on a
hang (pytest's faulthandler_timeout), since a collective one rank never reaches blocks.
"""

from __future__ import annotations

import multiprocessing
import traceback

import pytest
import torch

from helpers import CHECKPOINTS, random_tokens, rel_err
from ssd.engine.tensor_parallel import private_group
from ssd.models import collectives, load_model
from ssd.models.config import ModelConfig
from ssd.models.sharding import LAYER_AXES, check_tensor_parallel, shard_model
from ssd.scoring import Scorer

NAMES = list(CHECKPOINTS)  # GQA 1, 2 and 4 (one kv head on two ranks), biases, q/k norms, tied
PROMPTS = [random_tokens(13, seed=1), random_tokens(6, seed=2)]
STEPS = [[[9], [100]], [[3], [250]]]


def _scores(model):
    """Logits of two prompts of different lengths, then two decode steps: [2, 13, V] each."""
    scorer = Scorer(model, batch=2, page_size=4)
    out = [scorer.feed(PROMPTS, q_len=13)]
    out += [scorer.feed(chunk, q_len=13) for chunk in STEPS]
    return [
        torch.stack([torch.nn.functional.pad(x, (0, 0, 0, 13 - len(x))) for x in o]) for o in out
    ]


def _rank(rank: int, size: int, port: int, paths: dict[str, str], out: str, block) -> None:
    try:
        group = private_group(port, rank, size, timeout_s=120)
        if block is not None:
            collectives.register(group.name, block, rank, size)
        results = {}
        for name, path in paths.items():
            model = shard_model(load_model(path), group.name, rank, size, block is not None)
            with torch.no_grad():
                results[name] = _scores(model)
        if rank == 0:
            torch.save(results, out)
    except BaseException:
        traceback.print_exc()
        raise


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["gloo", "shared memory"])
def test_two_ranks_give_the_logits_of_one(transport, checkpoints, models, tmp_path):
    port = _free_port()
    out = tmp_path / "tp2.pt"
    paths = {name: str(checkpoints[name]) for name in NAMES}
    block = collectives.SharedBlock.allocate(2) if transport == "shared memory" else None
    ctx = multiprocessing.get_context("spawn")
    args = [(r, 2, port, paths, str(out), block) for r in range(2)]
    procs = [ctx.Process(target=_rank, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    got = torch.load(out)
    for name in NAMES:
        with torch.no_grad():
            want = _scores(models[name])
        for step, (a, b) in enumerate(zip(got[name], want, strict=True)):
            assert rel_err(a, b) <= 1e-5, (name, step)
            # where the reference's top logit is clear, the same token wins
            top2 = b.topk(2, -1).values
            clear = (top2[..., 0] - top2[..., 1]) > 1e-4
            assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear]), (name, step)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [2, 4])
def test_shards_put_back_together_are_the_model(name, size, models):
    """Column-parallel rows and row-parallel columns concatenate to the full weight (kv heads
    that replicate repeat); the vocabulary pads with zero rows to a multiple of the size."""
    model = models[name]
    cfg = model.cfg
    check_tensor_parallel(cfg, size)  # every tiny checkpoint splits over 2 and 4
    shards = [shard_model(model, "unused", r, size) for r in range(size)]
    for key, full in model.params.layers.items():
        axes = LAYER_AXES[key]
        dim = next((d for d, a in enumerate(axes, start=1) if a is not None), None)
        parts = [s.params.layers[key] for s in shards]
        if dim is None:
            assert all(torch.equal(p, full) for p in parts), key
        elif axes[dim - 1] == "kv_heads" and cfg.num_key_value_heads < size:
            per = size // cfg.num_key_value_heads  # ranks sharing each kv head
            assert torch.equal(torch.cat(parts[::per], dim), full), key
            assert all(torch.equal(parts[r], parts[r - r % per]) for r in range(size)), key
        else:
            assert torch.equal(torch.cat(parts, dim), full), key
    heads = torch.cat([s.params.lm_head for s in shards])
    assert torch.equal(heads[: cfg.vocab_size], model.params.lm_head)
    assert not heads[cfg.vocab_size :].any()
    starts = [s.cfg.shard.vocab_start for s in shards]
    assert starts == [r * shards[0].params.embed.shape[0] for r in range(size)]
    tied = [s.params.lm_head is s.params.embed for s in shards]
    assert tied == [cfg.tie_word_embeddings] * size


def test_vocabulary_pads_to_a_multiple_of_the_size(models):
    model = models["qwen2"]
    odd = ModelConfig(**{**model.cfg.__dict__, "vocab_size": 255})
    params = type(model.params)(
        **{
            **model.params.__dict__,
            "embed": model.params.embed[:255],
            "lm_head": model.params.lm_head[:255],
        }
    )
    shards = [shard_model(type(model)(cfg=odd, params=params), "unused", r, 2) for r in range(2)]
    assert [s.params.lm_head.shape[0] for s in shards] == [128, 128]
    assert torch.equal(torch.cat([s.params.embed for s in shards])[:255], params.embed)


@pytest.mark.parametrize(
    ("change", "size", "message"),
    [
        ({"num_attention_heads": 6}, 4, "6 attention heads do not split over 4"),
        ({"num_attention_heads": 6, "num_key_value_heads": 3}, 2, "3 kv heads neither split"),
        ({"intermediate_size": 130}, 4, "intermediate_size 130 does not split"),
        ({}, 0, "tensor_parallel must be >= 1"),
    ],
)
def test_shapes_that_do_not_split_are_refused(change, size, message, models):
    cfg = ModelConfig(**{**models["llama"].cfg.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        check_tensor_parallel(cfg, size)


@pytest.mark.timeout(60)
def test_a_rank_waiting_on_a_dead_rank_raises_instead_of_hanging():
    """Shared-memory collectives: rank 0 publishes and waits for rank 1, whose process has
    exited; within about a second of checks it raises, naming the rank."""
    ctx = multiprocessing.get_context("spawn")
    gone = ctx.Process(target=int)  # exits at once
    gone.start()
    gone.join()
    block = collectives.SharedBlock.allocate(2, slot_elems=16)
    collectives.SharedBlock(block, 1, 2).pids[1] = gone.pid  # rank 1 was that process
    rank0 = collectives.SharedBlock(block, 0, 2)
    with pytest.raises(RuntimeError, match=r"rank 1 .* is gone"):
        rank0.all_reduce(torch.ones(4))
