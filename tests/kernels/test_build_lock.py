"""The kernels' build lock: one left behind by a killed build must not hang every later load."""

from __future__ import annotations

import os
import time

import pytest

from ssd import kernels


def test_a_lock_older_than_any_build_is_removed(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - 2 * kernels.STALE_LOCK_S
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="removing a build lock"):
        kernels._clear_stale_lock(lock)
    assert not lock.exists()


def test_a_fresh_lock_is_left_to_its_build(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    kernels._clear_stale_lock(lock)
    kernels._clear_stale_lock(tmp_path / "none")  # no lock: nothing to do
    assert lock.exists()
