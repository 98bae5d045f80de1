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


def _q8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] quantized per row to 8 bits as the kernel does: (q as int64, scale [M])."""
    amax = x.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return torch.round(x * inv).long(), (amax / 127.0).squeeze(-1)


@pytest.mark.parametrize("m", [1, 4, 9, 20])  # 18 and 40 rows: AMX tiles, 2 and 3 chunks
@pytest.mark.parametrize("k", [128, 96, 100])  # K % 64, K % 32 and scalar tails
@pytest.mark.parametrize("n", [50, 301])  # N % 4 tails; 301: several tasks' blocks
def test_int8_is_the_exact_integer_product_scaled(m, k, n):
    """Bitwise: each output is the integer dot product of the 8-bit row and the int8 weights,
    converted to fp32 once and scaled, so AVX2 and AVX-512 builds give the same bits."""
    w = _weights(n, k, seed=3)
    q, scale = quantize_rows(w)
    x = torch.randn(2, m, k, generator=torch.Generator().manual_seed(m))  # leading dims kept
    x[0, 0, 5] = 0.5  # ties round to even on both sides
    x[1, -1] = 0.0  # an all-zero row: scale 0
    bias = torch.randn(n)
    xq, xs = _q8(x.reshape(-1, k))
    assert xq.abs().max() == 127
    dots = xq @ q.long().T  # exact
    ref = (dots.float() * xs[:, None] * scale + bias).reshape(2, m, n)
    out = linear(x, q, bias, scale)
    assert out.shape == (2, m, n)
    assert torch.equal(out, ref)
    # and the activation rounding is what it costs: at most half a step of x per weight
    wd = q.float() * scale[:, None]
    exact = F.linear(x, wd, bias)
    assert not torch.allclose(out, exact, rtol=1e-5, atol=1e-5)
    bound = (xs[:, None] / 2 * wd.abs().sum(-1)).reshape(2, m, n)
    assert ((out - exact).abs() <= bound * 1.001 + 1e-5).all()


def test_int8_rows_do_not_depend_on_their_batch():
    q, scale = quantize_rows(_weights(40, 128, seed=6))
    rows = torch.randn(12, 128, generator=torch.Generator().manual_seed(2))
    alone = torch.cat([linear(rows[i : i + 1], q, None, scale) for i in range(12)])
    for m in (2, 3, 7, 12):  # 12: AMX tiles where the CPU has them
        together = torch.cat([linear(rows[i : i + m], q, None, scale) for i in range(0, 12, m)])
        assert torch.equal(together, alone), m


def test_a_row_does_not_depend_on_its_batch():
    """Bitwise: each output is one dot product in a fixed order, whatever M and the row's place."""
    w = _weights(40, 136, seed=5).bfloat16()
    rows = torch.randn(11, 136, generator=torch.Generator().manual_seed(0)).bfloat16()
    alone = torch.cat([linear(rows[i : i + 1], w) for i in range(11)])
    for m in (2, 3, 5, 11):
        together = torch.cat([linear(rows[i : i + m], w) for i in range(0, 11, m)])
        assert torch.equal(together, alone), m


@pytest.mark.parametrize("m", [1, 3, 6, 8])  # 6 and 8: six-row tiles where bf16 x is dotted
@pytest.mark.parametrize("k", [64, 13, 136])  # K % 32 tails: one masked step
def test_bf16_activations_round_like_aten(m, k):
    w = _weights(32, k, seed=7).bfloat16()
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).bfloat16()
    out = linear(x, w)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.linear(x.float(), w.float()), rtol=8e-3, atol=8e-3)


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("m", [1, 5, 17])
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
