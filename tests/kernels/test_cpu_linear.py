"""The CPU linear kernels against an fp32 reference, and their batch invariance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssd.kernels import cpu_kernels_available, linear
from ssd.models.quantize import quantize_rows

pytestmark = pytest.mark.skipif(
    not cpu_kernels_available(), reason="needs an x86 CPU with AVX2 and a C++ compiler"
)


def _weights(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) / k**0.5


@pytest.mark.parametrize("m", [1, 2, 3, 5, 7, 20])
# N % 4 and K % 8 tails; 301 rows: more than one task's worth of blocks (each reads four runs)
@pytest.mark.parametrize(("n", "k"), [(64, 64), (37, 13), (9, 200), (301, 48)])
def test_bf16_matches_fp32_reference(m, n, k):
    w = _weights(n, k, seed=n + k).bfloat16()
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    bias = torch.randn(n)
    ref = F.linear(x, w.float(), bias)
    out = linear(x, w, bias)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _int8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int8 product as the kernel defines it, in torch: x rounded per row to integers of at
    most qmax (which keeps the kernels' int32 lanes from overflowing: a lane sums K / 8
    products), exact integer dot products, then the x row's scale and the weight row's."""
    k = x.shape[-1]
    qmax = min(32767, 2**31 // (127 * -(-k // 8)) - 1)
    amax = x.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(float(qmax)) / amax, torch.zeros_like(amax))
    xq = torch.round(x * inv).long()
    dots = (xq[..., None, :] * q.long()).sum(-1)  # [..., N], exact
    return dots.float() * (amax / qmax) * scale


@pytest.mark.parametrize("m", [1, 4, 9])
# K % 64, % 32 and % 16 tails (the 512- and 256-bit steps), and 4864: the draft's down projection
@pytest.mark.parametrize("k", [128, 96, 100, 13, 4864])
@pytest.mark.parametrize("n", [50, 301])  # N % 4 tails; 301: several tasks' blocks
def test_int8_equals_the_integer_reference_bitwise(m, k, n):
    """Integer sums do not depend on their order: the same bits on AVX2 and AVX-512 builds
    (CI runs this file on both), for any M and thread split."""
    w = _weights(n, k, seed=3)
    q, scale = quantize_rows(w)
    x = torch.randn(2, m, k, generator=torch.Generator().manual_seed(m))  # leading dims kept
    x[0, 0, :5] *= 1000  # an outlier costs its row precision, never an overflow
    out = linear(x, q, None, scale)
    assert out.shape == (2, m, n)
    assert torch.equal(out, _int8_reference(x, q, scale))
    assert (w - q.float() * scale[:, None]).abs().max() <= scale.max() / 2 + 1e-7
    # and the activation rounding is what it costs: within half a step of each row's scale
    exact = F.linear(x, q.float() * scale[:, None])
    assert not torch.equal(out, exact)
    torch.testing.assert_close(out[1], exact[1], rtol=1e-3, atol=1e-3)


def test_int8_rows_do_not_depend_on_their_batch():
    q, scale = quantize_rows(_weights(40, 128, seed=6))
    rows = torch.randn(7, 128, generator=torch.Generator().manual_seed(2))
    alone = torch.cat([linear(rows[i : i + 1], q, None, scale) for i in range(7)])
    for m in (2, 3, 7):
        together = torch.cat([linear(rows[i : i + m], q, None, scale) for i in range(0, 7, m)])
        assert torch.equal(together, alone), m


def test_a_row_does_not_depend_on_its_batch():
    """Bitwise: each output is one dot product in a fixed order, whatever M and the row's place."""
    w = _weights(40, 136, seed=5).bfloat16()
    rows = torch.randn(11, 136, generator=torch.Generator().manual_seed(0)).bfloat16()
    alone = torch.cat([linear(rows[i : i + 1], w) for i in range(11)])
    for m in (2, 3, 5, 11):
        together = torch.cat([linear(rows[i : i + m], w) for i in range(0, 11, m)])
        assert torch.equal(together, alone), m


def test_bf16_activations_round_like_aten():
    w = _weights(32, 64, seed=7).bfloat16()
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    out = linear(x, w)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.linear(x.float(), w.float()), rtol=8e-3, atol=8e-3)


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("m", [1, 5])
def test_matrices_of_one_call_equal_each_alone_bitwise(int8, m):
    # One parallel region shares every matrix out by the largest's blocks (N % 4 tails, a
    # matrix smaller than a task's share, and one large enough to split across threads).
    k = 128
    ws = [_weights(n, k, seed=n) for n in (1030, 7, 258, 64)]
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).bfloat16()
    biases = [torch.randn(w.shape[0]) if i % 2 else None for i, w in enumerate(ws)]
    if int8:
        ws, scales = zip(*(quantize_rows(w) for w in ws), strict=True)
    else:
        ws, scales = [w.bfloat16() for w in ws], [None] * len(ws)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = torch.ops.ssd_cpu.linear(x, list(ws), list(scales), biases)
        alone = [linear(x, w, b, s) for w, b, s in zip(ws, biases, scales, strict=True)]
    finally:
        torch.set_num_threads(old)
    for a, b in zip(together, alone, strict=True):
        assert torch.equal(a, b)
