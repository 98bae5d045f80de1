"""CPU weights on transparent huge pages.

Decoding streams every weight once per token. On 4 KB pages that is a page walk per 4 KB of
weights, and the kernel leaves huge pages to regions that ask for them (the common
`transparent_hugepage=madvise`). On a Xeon with 2 MB pages, Qwen2.5-Coder-1.5B's layer matrices
streamed at 30-33 GB/s against 28 and AR decoded 1.05 x faster; SD and SSD, whose passes do
more arithmetic per byte, did not change (docs/performance.md, finding 27).

`empty` gives a tensor in a private anonymous mapping advised `MADV_HUGEPAGE` and aligned to
2 MB, so the first write to it faults in whole huge pages; where the platform has no such advice
(not Linux) or the tensor is small, it is a plain `torch.empty`.
"""

from __future__ import annotations

import mmap

import torch
from torch import Tensor

HUGE_PAGE = 2 * 2**20
_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialized CPU tensor, on huge pages where it spans at least one."""
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    if _ADVICE is None or nbytes < HUGE_PAGE:
        return torch.empty(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(_ADVICE)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start : start + nbytes].view(dtype).view(shape)


def move(t: Tensor) -> Tensor:
    """A CPU tensor's copy on huge pages (`empty`); other devices' tensors as they are."""
    if t.device.type != "cpu":
        return t
    out = empty(tuple(t.shape), t.dtype)
    out.copy_(t)
    return out
