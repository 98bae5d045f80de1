"""Pytrees of frozen dataclasses, and donation tracking for states written in place.

State in ssd is a frozen dataclass registered once as a pytree: array fields are leaves, fields
declared with :func:`static` travel in the tree structure (they must be hashable). Step
functions return new states instead of mutating old ones, except for large buffers (KV pages),
which are written in place inside compiled code. Such a step *consumes* its input state
(:func:`donate`); any later use of the consumed state raises :class:`StaleStateError` naming the
step that consumed it, in the manner of buffer donation in JAX.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

import torch.utils._pytree as _pytree

T = TypeVar("T")

tree_map = _pytree.tree_map
tree_leaves = _pytree.tree_leaves
tree_flatten = _pytree.tree_flatten
tree_unflatten = _pytree.tree_unflatten
tree_structure = _pytree.tree_structure


def static(**kwargs: Any) -> Any:
    """A dataclass field that is part of the tree structure, not a leaf (shapes, flags, names)."""
    metadata = dict(kwargs.pop("metadata", {}), static=True)
    return dataclasses.field(metadata=metadata, **kwargs)


@dataclass_transform(
    frozen_default=True, eq_default=False, field_specifiers=(dataclasses.field, static)
)
def pytree_dataclass(cls: type[T]) -> type[T]:
    """Make `cls` a frozen dataclass and register it as a pytree.

    Instances compare and hash by identity (`eq=False`): fields hold tensors, whose `==` is
    elementwise, and identity is what donation tracking needs.
    """
    dc: Any = dataclasses.dataclass(frozen=True, eq=False)(cls)
    names = [f.name for f in dataclasses.fields(dc)]
    leaves = [f.name for f in dataclasses.fields(dc) if not f.metadata.get("static")]
    statics = [n for n in names if n not in leaves]

    def flatten(x: Any) -> tuple[list[Any], tuple[Any, ...]]:
        return [getattr(x, n) for n in leaves], tuple(getattr(x, n) for n in statics)

    def flatten_with_keys(x: Any) -> tuple[list[tuple[Any, Any]], tuple[Any, ...]]:
        return [(_pytree.GetAttrKey(n), getattr(x, n)) for n in leaves], tuple(
            getattr(x, n) for n in statics
        )

    def unflatten(values: Any, context: tuple[Any, ...]) -> Any:
        return dc(
            **dict(zip(leaves, values, strict=True)), **dict(zip(statics, context, strict=True))
        )

    _pytree.register_pytree_node(
        dc,
        flatten,
        unflatten,
        serialized_type_name=f"{dc.__module__}.{dc.__qualname__}",
        flatten_with_keys_fn=flatten_with_keys,
    )
    return dc


def replace(obj: T, **changes: Any) -> T:
    """A copy of the dataclass `obj` with some fields changed (a fresh, live, version-0 state)."""
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


class StaleStateError(RuntimeError):
    """A state was used after a step consumed it (its buffers may already hold newer data)."""


_consumed_by: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_versions: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def version(state: Any) -> int:
    """How many donating steps produced this state (0 for a state built directly)."""
    return _versions.get(state, 0)


def check_live(state: Any, use: str = "this step") -> None:
    """Raise :class:`StaleStateError` if `state` was consumed by an earlier step."""
    by = _consumed_by.get(state)
    if by is not None:
        raise StaleStateError(
            f"{type(state).__name__} version {version(state)} was consumed by {by} and cannot be "
            f"used by {use}: its buffers were written in place. Use the state {by} returned "
            f"(version {version(state) + 1})."
        )


def donate(old: Any, new: T, by: str) -> T:
    """Record that step `by` consumed `old` and produced `new`; returns `new`."""
    check_live(old, by)
    _consumed_by[old] = by
    _versions[new] = version(old) + 1
    return new


def donating(
    name: str | None = None, argnum: int = 0
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a step that writes its positional argument `argnum` (a state) in place and
    returns the successor first: `f(..., state, ...) -> (new_state, ...)`."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        by = name or f.__name__

        def step(*args: Any, **kwargs: Any) -> Any:
            check_live(args[argnum], by)
            out = f(*args, **kwargs)
            donate(args[argnum], out[0] if isinstance(out, tuple) else out, by)
            return out

        step.__name__ = f.__name__
        step.__qualname__ = f.__qualname__
        step.__doc__ = f.__doc__
        step.__wrapped__ = f  # type: ignore[attr-defined]
        return step

    return wrap
