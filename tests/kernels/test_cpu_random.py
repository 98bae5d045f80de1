"""The native Threefry words against the tensor-op Threefry they replace, bit for bit."""

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
