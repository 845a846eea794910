from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.checkpoint import CheckpointError, CheckpointStore


def test_round_trip_with_arrays(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "sub" / "agg.ckpt")
    assert store.load() is None
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    store.save({"version": 3, "parts": {"shared": {"w": w}}, "ledger": ("a", "b"), "x": None})
    state = store.load()
    assert state is not None
    assert state["version"] == 3
    assert state["ledger"] == ["a", "b"]
    got = state["parts"]["shared"]["w"]
    np.testing.assert_array_equal(got, w)
    got += 1  # restored arrays are writable copies
    assert list(tmp_path.joinpath("sub").iterdir()) == [store.path]  # no temp file left


def test_save_replaces_the_previous_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "c")
    store.save({"n": 1})
    store.save({"n": 2})
    assert store.load() == {"n": 2}


def test_corrupt_and_unserialisable(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "c")
    store.path.write_bytes(b"\xc1\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        store.load()
    store.path.write_bytes(b"\x93\x01\x02\x03")
    with pytest.raises(CheckpointError, match="not a map"):
        store.load()
    with pytest.raises(CheckpointError, match="not serialisable"):
        store.save({"f": object()})
