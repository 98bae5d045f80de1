"""Functional, counter-based random numbers (JAX-style keys) in pure tensor arithmetic.

A key is an int64 tensor of shape [..., 2] holding two 32-bit words; leading dimensions are a
batch of independent keys. Every random value is Threefry-2x32 (20 rounds, Salmon et al. 2011)
of a key and a counter, computed with int64 add/shift/xor/and only: no generator state, the
same numbers on CPU and CUDA, and traceable by `torch.compile(fullgraph=True)`.

Per-request streams: `fold_in(fold_in(key(seed), position), purpose)` gives the noise a request
uses at a token position, so a request's randomness never depends on which requests share its
batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssd import kernels

_MASK = 0xFFFFFFFF
_PARITY = 0x1BD11BDA
_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)


def _rotl(x: Tensor, r: int) -> Tensor:
    return ((x << r) | (x >> (32 - r))) & _MASK


def threefry2x32(key: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Threefry-2x32 of counters (x0, x1) under `key` [..., 2]; words are int64 in [0, 2**32).

    The key's batch dimensions broadcast against the counters' leading dimensions.
    """
    k0, k1 = key[..., 0], key[..., 1]
    extra = x0.dim() - k0.dim()
    k0 = k0.reshape(k0.shape + (1,) * extra)
    k1 = k1.reshape(k1.shape + (1,) * extra)
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = (x0 + ks[0]) & _MASK
    x1 = (x1 + ks[1]) & _MASK
    for i in range(20):
        x0 = (x0 + x1) & _MASK
        x1 = _rotl(x1, _ROTATIONS[i % 8]) ^ x0
        if i % 4 == 3:
            s = (i + 1) // 4
            x0 = (x0 + ks[s % 3]) & _MASK
            x1 = (x1 + ks[(s + 1) % 3] + s) & _MASK
    return x0, x1


def key(seed: int | Tensor, device: torch.device | str | None = None) -> Tensor:
    """A key from a seed in [0, 2**63), or a batch of keys from an int64 tensor of seeds."""
    if isinstance(seed, Tensor):
        s = seed.to(torch.int64)
    else:
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        s = torch.tensor(seed, dtype=torch.int64, device=device)
    return torch.stack([(s >> 32) & _MASK, s & _MASK], dim=-1)


def _check_key(k: Tensor) -> None:
    if k.dtype != torch.int64 or k.dim() == 0 or k.shape[-1] != 2:
        raise ValueError(
            f"a key is an int64 tensor of shape [..., 2], got {k.dtype} {tuple(k.shape)}"
        )


def fold_in(k: Tensor, data: int | Tensor) -> Tensor:
    """A new key derived from `k` and integer data (broadcast over the key's batch dims)."""
    _check_key(k)
    d = torch.as_tensor(data, dtype=torch.int64, device=k.device)
    d = d.expand(k.shape[:-1]) if d.dim() == 0 else d
    y0, y1 = threefry2x32(k, (d >> 32) & _MASK, d & _MASK)
    return torch.stack([y0, y1], dim=-1)


def split(k: Tensor, n: int = 2) -> Tensor:
    """`n` independent keys from `k`: shape [..., n, 2]."""
    _check_key(k)
    counter = torch.arange(n, dtype=torch.int64, device=k.device).expand(*k.shape[:-1], n)
    y0, y1 = threefry2x32(k, torch.full_like(counter, _MASK), counter)
    return torch.stack([y0, y1], dim=-1)


def bits(k: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Two words of 32 random bits each, shape `k.shape[:-1] + shape`: Threefry of the counters
    (0, j) for j in row-major order (on CPU, the same words from one native call)."""
    _check_key(k)
    n = 1
    for s in shape:
        n *= s
    if kernels.native_on(k):
        w0, w1 = torch.ops.ssd_cpu.threefry_bits(k.reshape(-1, 2), n)
        out = (*k.shape[:-1], *shape)
        return w0.view(out), w1.view(out)
    counter = torch.arange(n, dtype=torch.int64, device=k.device).reshape(shape)
    counter = counter.expand(*k.shape[:-1], *shape)
    return threefry2x32(k, torch.zeros_like(counter), counter)


def uniform(k: Tensor, shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform values in the open interval (0, 1), shape `k.shape[:-1] + shape`.

    float32 uses 23 random bits, float64 uses 52: the grid (i + 1/2) / 2**bits, symmetric and
    never exactly 0 or 1, so `-log(u)` and `-log(1 - u)` are finite and positive.
    """
    w0, w1 = bits(k, shape)
    if dtype == torch.float64:
        i = (w0 << 20) | (w1 >> 12)
        return (i.to(torch.float64) + 0.5) * 2.0**-52
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"uniform supports floating dtypes, got {dtype}")
    return ((w0 >> 9).to(torch.float32) + 0.5).mul(2.0**-23).to(dtype)


def exponential(
    k: Tensor, shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard exponential noise, strictly positive and finite."""
    return -torch.log(uniform(k, shape, dtype))


def gumbel(k: Tensor, shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard Gumbel noise."""
    return -torch.log(exponential(k, shape, dtype))
