"""Digits loading, the Dirichlet label split, type transforms and the two regimes."""

from __future__ import annotations

import numpy as np
import pytest

from moe.data import (
    DeviceTypeTransform,
    dirichlet_label_split,
    load_digits_arrays,
    make_regime,
    stratified_split,
)


def test_digits_are_scaled_to_unit_range() -> None:
    x, y = load_digits_arrays()
    assert x.shape == (1797, 64)
    assert x.dtype == np.float32
    assert x.min() == 0.0
    assert x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_stratified_split_is_seeded_and_disjoint() -> None:
    _, y = load_digits_arrays()
    train, test = stratified_split(y, 0.25, np.random.default_rng(0))
    again, _ = stratified_split(y, 0.25, np.random.default_rng(0))
    np.testing.assert_array_equal(train, again)
    assert np.intersect1d(train, test).size == 0
    assert train.size + test.size == y.size
    assert abs(test.size - 0.25 * y.size) <= 10
    assert np.bincount(y[test], minlength=10).min() >= 40  # every class held out


@pytest.mark.parametrize(("num_devices", "alpha"), [(30, 0.1), (10, 0.5), (100, 0.1), (1, 1.0)])
def test_dirichlet_split_covers_every_sample_once(num_devices: int, alpha: float) -> None:
    _, y = load_digits_arrays()
    shards = dirichlet_label_split(y, num_devices, alpha, np.random.default_rng(1), 8)
    assert len(shards) == num_devices
    everything = np.concatenate(shards)
    np.testing.assert_array_equal(np.sort(everything), np.arange(y.size))
    assert min(s.size for s in shards) >= 8


def test_small_alpha_gives_skewed_devices() -> None:
    _, y = load_digits_arrays()

    def median_top2_share(alpha: float) -> float:
        shards = dirichlet_label_split(y, 30, alpha, np.random.default_rng(2), 10)
        top2 = [np.sort(np.bincount(y[s], minlength=10))[-2:].sum() / s.size for s in shards]
        return float(np.median(top2))

    assert median_top2_share(0.1) > 0.75  # α = 0.1: mostly one or two classes per device
    assert median_top2_share(100.0) < 0.3  # near-i.i.d. for a large α


def test_dirichlet_split_rejects_impossible_minimums() -> None:
    y = np.zeros(20, dtype=np.int64)
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_label_split(y, 5, 0.1, np.random.default_rng(0), min_samples=5)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_label_split(y, 2, 0.0, np.random.default_rng(0))


def test_type_transforms_are_seeded_permutations_with_identity_first() -> None:
    t = DeviceTypeTransform.make(4, 64, seed=3)
    assert t.num_types == 4
    np.testing.assert_array_equal(t.permutations[0], np.arange(64))
    for perm in t.permutations:
        np.testing.assert_array_equal(np.sort(perm), np.arange(64))
    assert len({tuple(p) for p in t.permutations}) == 4
    np.testing.assert_array_equal(t.permutations, DeviceTypeTransform.make(4, 64, 3).permutations)
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    moved = t.apply_type(x, 2)
    np.testing.assert_array_equal(np.sort(moved, axis=1), np.sort(x, axis=1))
    np.testing.assert_array_equal(t.apply_type(x, 0), x)
    with pytest.raises(ValueError, match="device_type"):
        t.apply_type(x, 4)


def test_label_skew_regime_is_one_identity_type() -> None:
    data = make_regime("label-skew", 20, seed=0)
    assert data.num_devices == 20
    assert {d.device_type for d in data.devices} == {0}
    x, y = data.pooled()
    assert x.shape[0] == y.shape[0]
    assert x.shape[0] + data.test_x.shape[0] == 1797
    assert (data.test_types == 0).all()
    assert min(d.num_samples for d in data.devices) >= 10


def test_fleet_regime_types_and_test_coverage() -> None:
    data = make_regime("fleet", 30, seed=4, num_types=4)
    types = np.array([d.device_type for d in data.devices])
    assert np.bincount(types, minlength=4).tolist() == [8, 8, 7, 7]
    n_test = data.test_y.size // 4
    assert np.bincount(data.test_types).tolist() == [n_test] * 4
    # Each test digit appears once under each type's transform.
    base = data.test_x[:n_test]
    for t in range(4):
        rows = data.test_x[data.test_types == t]
        np.testing.assert_array_equal(rows, data.transform.apply_type(base, t))
        np.testing.assert_array_equal(data.test_y[data.test_types == t], data.test_y[:n_test])
    # Device inputs are their type's view: unpermuting gives back raw digits.
    x_raw, _ = load_digits_arrays()
    raw_rows = {r.tobytes() for r in x_raw}
    d = next(dev for dev in data.devices if dev.device_type == 2)
    inverse = np.argsort(data.transform.permutations[2])
    assert all(row.tobytes() in raw_rows for row in d.x[:, inverse])


def test_regimes_are_seeded() -> None:
    a, b = make_regime("fleet", 12, seed=9), make_regime("fleet", 12, seed=9)
    for da, db in zip(a.devices, b.devices, strict=True):
        np.testing.assert_array_equal(da.x, db.x)
        assert da.device_type == db.device_type
    c = make_regime("fleet", 12, seed=10)
    assert not np.array_equal(a.test_x, c.test_x)
    with pytest.raises(ValueError, match="unknown regime"):
        make_regime("iid", 5, seed=0)  # type: ignore[arg-type]


def test_a_fleet_larger_than_the_data_reuses_shards() -> None:
    from moe.data import make_regime

    small = make_regime("fleet", 134, seed=1)
    big = make_regime("fleet", 1000, seed=1)
    assert big.num_devices == 1000
    assert min(d.num_samples for d in big.devices) >= 10
    # Device i holds shard i mod 134 (labels identical; inputs under its own type).
    for i in (0, 133, 134, 999):
        np.testing.assert_array_equal(big.devices[i].y, small.devices[i % 134].y)
