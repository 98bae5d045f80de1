"""Native CPU kernels, built on first use, and the `linear` every model projection goes through.

`linear(x, w, b)` is `F.linear` except on x86 CPUs with AVX2 and FMA, where bf16 and int8
weights go through `cpu_linear.cpp`: it streams the weights once per call and accumulates in
fp32, several times faster than ATen's bf16 GEMM at the row counts of decoding (1 to ~20), and
batch-invariant (a row's result does not depend on the other rows). Where the CPU has AVX-512
BF16 and VNNI the extension is built with them and the tiles run at 512 bits. `cpu_attention.cpp`
is the paged attention `ssd.attention` uses on such CPUs: it reads K/V pages in place instead of
gathering them. `cpu_layer.cpp` runs every decoder layer of a forward in one call for bf16
activations (`ssd.models.decoder` uses it where `fused_layers` holds), sparing the forty small ops
of each layer and the layer itself their dispatch from Python. `cpu_random.cpp` computes
`ssd.random.bits` (Threefry words) in one call instead of a hundred tensor ops, and
`ssd.sampling.sample`'s draw in one pass over the row. The extension
is compiled once per machine into ``$SSD_CACHE_DIR/kernels`` (about 40 s; needs a C++
compiler). Where it cannot be built or used, everything falls back to ATen with a warning, and
int8 weights are widened on the fly.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

_HERE = Path(__file__).parent
_SOURCES = [_HERE / f"cpu_{name}.cpp" for name in ("linear", "attention", "layer", "random")]
_HEADERS = [_HERE / "simd.h", _HERE / "kernels.h"]


@functools.cache
def cpu_kernels_available() -> bool:
    """Build (or load the cached build of) the CPU extension; False where it cannot run."""
    if os.environ.get("SSD_CPU_KERNELS", "1") == "0":
        return False
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return False
    from torch.utils.cpp_extension import load

    flags = build_flags()
    # torch rebuilds when a source changes but not when a header does: key the folder on both,
    # and on the flags (a cache directory may be shared by machines of different kinds)
    sources = b"".join(p.read_bytes() for p in _SOURCES + _HEADERS)
    digest = hashlib.sha256(sources + " ".join(flags).encode()).hexdigest()
    root = Path(os.environ.get("SSD_CACHE_DIR") or Path.home() / ".cache" / "ssd")
    root = root / "kernels" / digest[:12]
    root.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(root / "lock")
    try:
        load(
            name="ssd_cpu_kernels",
            sources=[str(p) for p in _SOURCES],
            extra_cflags=flags,
            build_directory=str(root),
            is_python_module=False,
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError) as e:
        warnings.warn(f"ssd: CPU kernels unavailable, using ATen's ({e})", stacklevel=2)
        return False
    return True


STALE_LOCK_S = 600.0  # a build takes about 40 s; a lock this old outlived a killed build


def _clear_stale_lock(lock: Path) -> None:
    """torch's build lock stays behind when its builder is killed, and every later load waits
    on it forever: remove one far older than a build."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        warnings.warn(f"ssd: removing a build lock {age:.0f} s old ({lock})", stacklevel=3)
        lock.unlink(missing_ok=True)


def _register_fake() -> None:
    @torch.library.register_fake("ssd_cpu::linear")
    def _(x: Tensor, w: list[Tensor], scale: list, bias: list) -> list[Tensor]:
        return [x.new_empty((*x.shape[:-1], wp.shape[0])) for wp in w]

    @torch.library.register_fake("ssd_cpu::decoder_layers")
    def _(x: Tensor, *args: object) -> Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("ssd_cpu::threefry_bits")
    def _(key: Tensor, n: int) -> tuple[Tensor, Tensor]:
        return key.new_empty((key.shape[0], n)), key.new_empty((key.shape[0], n))

    @torch.library.register_fake("ssd_cpu::exponential_race")
    def _(probs: Tensor, key: Tensor) -> Tensor:
        return key.new_empty((key.shape[0],))

    @torch.library.register_fake("ssd_cpu::paged_attention")
    def _(q: Tensor, k: Tensor, v: Tensor, tables: Tensor, mask: Tensor, scale: float) -> Tensor:
        return torch.empty_like(q)


def build_flags() -> list[str]:
    """The compiler flags of the extension on this CPU (`benchmarks/kernel_ab.py` uses them too)."""
    return ["-O3", "-mavx2", "-mfma", "-fopenmp", *_avx512_flags()]


def _avx512_flags() -> list[str]:
    """Compiler flags for the AVX-512 BF16 and VNNI paths, where this CPU has both, and for the
    AMX int8 tiles where it has those too."""
    cpu = torch.cpu
    bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
    vnni = getattr(cpu, "_is_vnni_supported", lambda: False)()
    wanted = os.environ.get("SSD_CPU_AVX512", "1") != "0"  # benchmarks compare both builds
    if not wanted or torch.backends.cpu.get_cpu_capability() != "AVX512" or not (bf16 and vnni):
        return []
    flags = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vnni"]
    amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    if amx and os.environ.get("SSD_CPU_AMX", "1") != "0":  # benchmarks compare both builds
        flags += ["-mamx-tile", "-mamx-int8"]
    amd = _amd()
    for tuning in ("SSD_CPU_BF16_DOT", "SSD_CPU_L2_PREFETCH"):  # benchmarks compare both builds
        if os.environ.get(tuning, "1" if amd else "0") != "0":
            flags += [f"-D{tuning}"]
    return flags


def _amd() -> bool:
    """AMD's AVX-512 cores (Zen 4 on) issue vdpbf16ps at the FMA rate (the Xeons measured, at a
    quarter of it) and stream their tiles faster prefetching into L2 too (docs/performance.md,
    findings 11, 42, 44 and 46)."""
    try:
        return "AuthenticAMD" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


_native: bool | None = None  # set by `prepare`; a plain global, so traced code reads a constant


def prepare() -> bool:
    """Build or load the kernels now (model loading calls this, before anything is traced)."""
    global _native
    if _native is None:
        _native = cpu_kernels_available()
        if _native:
            _register_fake()
    return _native


def native_on(x: Tensor) -> bool:
    """Whether the native kernels serve tensors on x's device."""
    native = _native if _native is not None else prepare()
    return native and x.device.type == "cpu"


FUSED_LAYERS = os.environ.get("SSD_FUSED_LAYERS", "1") != "0"  # tests compare both paths


def fused_layers(x: Tensor, weights: list[Tensor]) -> bool:
    """Whether `ssd_cpu::decoder_layers` serves layers with activations x and these matrices."""
    return (
        FUSED_LAYERS
        and native_on(x)
        and x.dtype == torch.bfloat16
        and all(w.dtype in (torch.bfloat16, torch.int8) for w in weights)
    )


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """x @ w.T + bias, for w [N, K] in x's dtype, bf16, or int8 with per-row `scale` [N]."""
    if native_on(x) and w.dtype in (torch.bfloat16, torch.int8):
        return torch.ops.ssd_cpu.linear(x, [w], [scale], [bias])[0]
    if scale is not None:  # int8 elsewhere: widen, then scale the rows
        return F.linear(x, w.to(x.dtype)) * scale.to(x.dtype) + (0 if bias is None else bias)
    return F.linear(x, w, bias)
