"""The native Threefry words and draws against the tensor ops they replace, bit for bit."""

from __future__ import annotations

import pytest
import torch

from ssd import random as rnd
from ssd.kernels import cpu_kernels_available, prepare

pytestmark = pytest.mark.skipif(
    not cpu_kernels_available(), reason="needs an x86 CPU with AVX2 and a C++ compiler"
)


@pytest.mark.parametrize(
    ("seeds", "shape"),
    [([0], (1,)), ([7, 2**40 + 3, 2**63 - 1], (5, 33)), ([12345], (151_936,)), ([1, 2], ())],
)
def test_native_bits_equal_the_tensor_ops(seeds, shape):
    assert prepare()
    keys = rnd.fold_in(rnd.key(torch.tensor(seeds)), 3)
    n = 1
    for s in shape:
        n *= s
    counter = torch.arange(n, dtype=torch.int64).reshape(shape).expand(*keys.shape[:-1], *shape)
    want = rnd.threefry2x32(keys, torch.zeros_like(counter), counter)  # the tensor-op path
    got = rnd.bits(keys, shape)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and torch.equal(g, w)


def test_native_bits_follow_a_key_with_no_batch_dims():
    k = rnd.key(99)
    w0, w1 = rnd.bits(k, (4, 3))
    c = torch.arange(12).reshape(4, 3)
    r0, r1 = rnd.threefry2x32(k, torch.zeros_like(c), c)
    assert torch.equal(w0, r0) and torch.equal(w1, r1)


def _tensor_race(probs, keys):
    """`ssd.sampling.sample`'s draw in tensor ops, as it runs where the kernels do not."""
    noise = rnd.exponential(keys, (probs.shape[-1],), dtype=torch.float64)
    return (probs.to(torch.float64) / noise).argmax(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("vocab", [1, 7, 300, 40_000, 151_936])
def test_native_draw_is_the_tensor_race(dtype, vocab):
    """The same token for every row: peaked and flat rows, zeros, one-hot rows, unnormalized
    rows, several chunks of the row (40 000 and up) and one."""
    g = torch.Generator().manual_seed(vocab)
    rows = []
    for scale in (0.1, 1.0, 4.0, 12.0):
        rows.append(torch.softmax(torch.randn(vocab, generator=g) * scale, -1))
    sparse = rows[1].clone()
    sparse[::2] = 0
    one_hot = torch.zeros(vocab)
    one_hot[vocab // 2] = 1
    rows += [sparse * 37.0, one_hot, torch.full((vocab,), 3.0)]
    probs = torch.stack(rows).to(dtype)
    keys = rnd.fold_in(rnd.key(torch.arange(len(rows)) + vocab), 5)
    for trial in range(8):
        k = rnd.fold_in(keys, trial)
        assert torch.equal(torch.ops.ssd_cpu.exponential_race(probs, k), _tensor_race(probs, k))


def test_native_draw_never_picks_a_zero_and_serves_sample():
    from ssd.sampling import sample

    probs = torch.zeros(3, 2, 1000)
    probs[..., 10:20] = 0.1
    keys = rnd.key(torch.arange(6)).reshape(3, 2, 2)
    got = sample(probs, keys)
    assert got.shape == (3, 2) and ((got >= 10) & (got < 20)).all()
    assert torch.equal(got, _tensor_race(probs, keys))
