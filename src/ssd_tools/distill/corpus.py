"""Offline, lawful text for distillation prompts: the Python standard library's documentation.

Only the standard library is read (docstrings, parsed with `ast`, never imported, plus the
language reference topics in `pydoc_data`), so the text is the same on every machine with the
same Python minor version and nothing depends on which packages happen to be installed. It is
PSF-licensed documentation that ships with every Python. It serves as the passages of the
summarization, extraction and retrieval-style prompts; the Spec-Bench questions are never read.
"""

from __future__ import annotations

import ast
import inspect
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Test suites, IDLE and demo code hold little prose and much noise.
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "ensurepip"}


@dataclass(frozen=True)
class Passage:
    source: str  # dotted module name, or "pydoc_data:<topic>"
    title: str  # the documented name: module, class, function or topic
    text: str


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _docstrings(root: Path, path: Path) -> list[Passage]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    mod = _module_name(root, path)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        if doc and len(doc) >= 300:
            title = mod if isinstance(node, ast.Module) else f"{mod}.{node.name}"
            out.append(Passage(mod, title, inspect.cleandoc(doc)))
    return out


def _topics(root: Path) -> list[Passage]:
    """The language reference sections that `help("topic")` shows, as a dict in a module."""
    path = root / "pydoc_data" / "topics.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        node = next(n for n in tree.body if isinstance(n, ast.Assign))
        topics = ast.literal_eval(node.value)
    except (OSError, SyntaxError, StopIteration, ValueError):
        return []
    return [Passage(f"pydoc_data:{k}", k, v.strip()) for k, v in sorted(topics.items())]


def stdlib_passages(root: str | Path | None = None) -> list[Passage]:
    """All long docstrings and reference topics of the standard library, in a fixed order."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in base.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(base).parts)
    )
    out = [d for f in files for d in _docstrings(base, f)]
    return out + _topics(base)


def window(text: str, rng: random.Random, min_chars: int, max_chars: int) -> str:
    """A run of whole paragraphs of about `min_chars`..`max_chars` characters from `text`."""
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paras:
        return text[:max_chars]
    start = rng.randrange(len(paras))
    chosen: list[str] = []
    size = 0
    for p in paras[start:] + paras[:start]:
        if size >= min_chars:
            break
        chosen.append(p)
        size += len(p) + 2
    out = "\n\n".join(chosen)
    return out[:max_chars]


def stdlib_sources(root: str | Path | None = None) -> list[str]:
    """The standard library's own Python source files (code, in a fixed order)."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in base.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(base).parts)
    )
    out = []
    for f in files:
        try:
            out.append(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def text_chunks(tokenizer: Any, n: int, length: int, seed: int) -> list[list[int]]:
    """`n` chunks of `length` tokens of raw standard-library text, half documentation and half
    source code, cut from shuffled documents: plain-text distillation data that costs one
    target prefill per token instead of one decode step."""
    rng = random.Random(f"text:{seed}")
    out: list[list[int]] = []
    for pool, quota in (
        ([p.text for p in stdlib_passages()], n // 2),
        (stdlib_sources(), n - n // 2),
    ):
        rng.shuffle(pool)
        got, buf = 0, list[int]()
        for text in pool:
            if got >= quota:
                break
            buf += tokenizer.encode(text + "\n\n", add_special_tokens=False)
            while len(buf) >= length and got < quota:
                out.append(buf[:length])
                buf, got = buf[length:], got + 1
    return out
