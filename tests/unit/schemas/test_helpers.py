"""The test helper `same` compares arrays by value; make sure it is not vacuous."""

from __future__ import annotations

import numpy as np

from tests.unit.schemas.helpers import part, same


def test_same_compares_arrays_by_value() -> None:
    a = np.array([1.0, np.nan], dtype=np.float32)
    assert same(a, a.copy())
    assert not same(a, np.array([1.0, 2.0], dtype=np.float32))
    assert not same(a, a.astype(np.float64))
    assert not same(a, a.reshape(1, 2))
    assert not same(np.array([1, 2]), [1, 2])


def test_same_walks_dataclasses_maps_and_tuples() -> None:
    assert same(part(), part())
    assert not same(part(), part("shared"))
    assert not same((1, 2), [1, 2])
    assert not same({"a": 1}, {"a": 1.0})
    assert not same({"a": 1, "b": 2}, {"b": 2, "a": 1})
