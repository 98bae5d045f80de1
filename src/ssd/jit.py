"""The `jit` of this engine: pure steps compiled per static shape bucket.

Compilers (`Step(fn, jit=...)`):
- ``eager``: call the step as is (debugging, and the reference the others must equal);
- ``compile``: `torch.compile(fullgraph=True, dynamic=False)`: one graph per shape bucket;
- ``cudagraph`` (CUDA only): compile, then capture one CUDA graph per bucket and replay it, with
  the per-call inputs copied into the graph's static buffers.

Callers pad their inputs to buckets (:func:`bucket`) so the number of graphs stays small.
`Step(..., donate=i)` marks argument i (a state written in place, such as the KV cache) as
consumed by each call, as `jax.jit`'s donated arguments: reusing it raises
:class:`ssd.pytree.StaleStateError`, and the call's first output is its successor.
Compiled graphs persist across processes in the inductor cache (:func:`configure_inductor`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from ssd.pytree import donating

JITS = ("eager", "compile", "cudagraph")


def bucket(n: int, sizes: Sequence[int]) -> int:
    """The smallest size in `sizes` (ascending) that holds `n`; multiples of the largest beyond."""
    for s in sizes:
        if n <= s:
            return s
    top = sizes[-1]
    return -(-n // top) * top


def pow2(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def length_buckets(lengths: Sequence[int], minimum: int = 16) -> list[tuple[int, list[int]]]:
    """(bucket, indices) for each power-of-two length bucket, shortest first. Prefilling each
    group on its own pads a prompt to under twice its length, where one step over all of them
    would pad every prompt to the longest."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(pow2(n, minimum), []).append(i)
    return sorted(groups.items())


def configure_inductor(path: str | Path | None = None) -> Path:
    """Inductor settings for every compiled step: graphs persist in ``$SSD_CACHE_DIR/inductor``
    (default ~/.cache/ssd/inductor), and bf16/fp16 intermediates round as in eager code."""
    root = Path(path or os.environ.get("SSD_CACHE_DIR") or Path.home() / ".cache" / "ssd")
    cache = root / "inductor"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    torch._inductor.config.fx_graph_cache = True
    # Round low-precision intermediates as eager does, so compiled bf16 gives eager's tokens.
    torch._inductor.config.emulate_precision_casts = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    leaves, spec = pytree.tree_flatten(args)
    shapes = tuple(
        (tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves
    )
    return (spec, shapes)


class Step:
    """A pure step `fn(*args)` run under one of :data:`JITS`.

    `persistent` names the positional arguments whose tensors keep their storage from call to
    call (weights, KV pages): a CUDA graph reads and writes them in place. All other tensor
    arguments are copied into the graph's static inputs on each replay, and the outputs of a
    replay are the graph's own buffers, valid until the next call.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        jit: str = "eager",
        persistent: Sequence[int] = (),
        donate: int | None = None,
    ):
        if jit not in JITS:
            raise ValueError(f"jit must be one of {JITS}, got {jit!r}")
        if jit == "cudagraph" and not torch.cuda.is_available():
            raise ValueError("jit 'cudagraph' needs CUDA; use 'compile' or 'eager'")
        self.fn, self.jit, self.persistent = fn, jit, tuple(persistent)
        name = getattr(fn, "__name__", "step")
        self._call = self._run if donate is None else donating(name, donate)(self._run)
        self._compiled = fn
        if jit != "eager":
            configure_inductor()
            self._compiled = torch.compile(fn, fullgraph=True, dynamic=False)
        self._graphs: dict[tuple[Any, ...], _Graph] = {}

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def _run(self, *args: Any) -> Any:
        if self.jit != "cudagraph":
            return self._compiled(*args)
        key = _signature(args)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _Graph(self._compiled, args, self.persistent)
        return graph.replay(args)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)


class _Graph:
    """One captured CUDA graph with static input and output buffers."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], persistent: tuple[int, ...]):
        self.persistent = persistent
        self.inputs = tuple(
            a if i in persistent else pytree.tree_map(_clone, a) for i, a in enumerate(args)
        )
        self.addresses = _addresses(args, persistent)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compile and autotune outside the capture
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            outputs = fn(*self.inputs)
        self.outputs, self.out_spec = pytree.tree_flatten(outputs)

    def replay(self, args: tuple[Any, ...]) -> Any:
        if _addresses(args, self.persistent) != self.addresses:
            raise ValueError("a persistent argument (weights or KV pages) moved since capture")
        for i, (static, new) in enumerate(zip(self.inputs, args, strict=True)):
            if i not in self.persistent:
                pytree.tree_map(_copy_into, static, new)
        self.graph.replay()
        # Fresh containers around the same buffers: each call returns a new state object, so
        # donation tracking sees one version per step.
        return pytree.tree_unflatten(self.outputs, self.out_spec)


def _clone(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else x


def _copy_into(static: Any, new: Any) -> None:
    if isinstance(static, torch.Tensor):
        static.copy_(new, non_blocking=True)


def _addresses(args: tuple[Any, ...], persistent: tuple[int, ...]) -> tuple[int, ...]:
    leaves = pytree.tree_leaves(tuple(args[i] for i in persistent))
    return tuple(x.data_ptr() for x in leaves if isinstance(x, torch.Tensor))
