"""Aggregation rules against numpy/scipy references, streaming, clipping, memory, registry."""

from __future__ import annotations

import gc
import json
import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import stats

import moe.aggregation.base as base_module
from moe.aggregation import (
    CoordinateMedian,
    FedAvg,
    FedAvgAccumulator,
    TrimmedMean,
    make_rule,
    rule_from_plain,
    rule_to_plain,
)
from moe.aggregation.base import AggregationRule
from moe.aggregation.errors import SnapshotError
from moe.errors import InvalidArgumentError, UpdateRejected

SHAPES = {"fc1.weight": (16, 8), "fc1.bias": (16,), "fc2.weight": (4, 16), "gate.bias": (1,)}
Tensors = dict[str, NDArray[Any]]


def make_base(seed: int = 0) -> Tensors:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def make_updates(base: Tensors, n: int, seed: int, scale: float = 0.1) -> list[Tensors]:
    rng = np.random.default_rng(seed)
    return [
        {
            name: (b + scale * rng.standard_normal(b.shape)).astype(np.float32)
            for name, b in base.items()
        }
        for _ in range(n)
    ]


def stacked(updates: list[Tensors], name: str) -> NDArray[np.float64]:
    return np.stack([u[name] for u in updates]).astype(np.float64)


def run(rule: AggregationRule, base: Tensors, updates: list[Tensors], weights: Any) -> Any:
    accumulator = rule.start(base)
    for i, (update, weight) in enumerate(zip(updates, weights, strict=True)):
        accumulator.add(f"dev-{i}", update, float(weight))
    return accumulator.result()


def assert_tensors_close(got: Tensors, want: Tensors, rtol: float = 1e-6) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == np.float32
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=1e-6, err_msg=name)


def delta_norm(tensors: Tensors, base: Tensors) -> float:
    return math.sqrt(
        sum(float(np.sum((tensors[n].astype(np.float64) - base[n]) ** 2)) for n in base)
    )


# --- FedAvg -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_fedavg_equals_numpy_weighted_average(seed: int) -> None:
    base = make_base(seed)
    updates = make_updates(base, 7, seed + 100)
    weights = np.random.default_rng(seed).integers(1, 500, size=7).astype(float)
    got = run(FedAvg(), base, updates, weights)
    want = {n: np.average(stacked(updates, n), axis=0, weights=weights) for n in base}
    assert_tensors_close(got, want)


@pytest.mark.parametrize("seed", range(5))
def test_fedavg_streaming_is_order_independent(seed: int) -> None:
    # Adding one by one in any order equals the batch (all-at-once) weighted mean.
    base = make_base(seed)
    updates = make_updates(base, 12, seed + 7)
    weights = np.random.default_rng(seed + 1).uniform(0.5, 100.0, size=12)
    batch = {n: np.average(stacked(updates, n), axis=0, weights=weights) for n in base}
    rng = np.random.default_rng(seed + 2)
    for _ in range(3):
        order = rng.permutation(12)
        got = run(FedAvg(), base, [updates[i] for i in order], weights[order])
        assert_tensors_close(got, batch)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(
        st.floats(0.0, 1e300) | st.integers(0, 10_000) | st.sampled_from([5e-324, 1e-300]),
        min_size=1,
        max_size=12,
    ),
)
def test_fedavg_streaming_equals_batch_property(seed: int, weights: list[float]) -> None:
    base = make_base(seed % 7)
    updates = make_updates(base, len(weights), seed)
    order = np.random.default_rng(seed).permutation(len(weights))
    got = run(FedAvg(), base, [updates[i] for i in order], [weights[i] for i in order])
    if sum(weights) == 0:
        assert got is None
        return
    # The reference, normalised first so that numpy's own sum neither underflows nor overflows.
    norm = np.asarray(weights, np.float64) / max(weights)
    want = {n: np.average(stacked(updates, n), axis=0, weights=norm) for n in base}
    assert_tensors_close(got, want, rtol=1e-5)


def test_fedavg_single_update_is_returned_exactly() -> None:
    base = make_base()
    (update,) = make_updates(base, 1, 3)
    got = run(FedAvg(), base, [update], [42.0])
    for name in base:
        np.testing.assert_array_equal(got[name], update[name])


def test_fedavg_with_no_updates_or_zero_weight_keeps_base() -> None:
    base = make_base()
    assert FedAvg().start(base).result() is None
    accumulator = FedAvg().start(base)
    for i, update in enumerate(make_updates(base, 3, 1)):
        accumulator.add(f"d{i}", update, 0.0)
    assert accumulator.count == 3
    assert accumulator.total_weight == 0.0
    assert accumulator.result() is None


def test_fedavg_zero_weight_update_has_no_effect() -> None:
    base = make_base()
    updates = make_updates(base, 4, 2)
    without = run(FedAvg(), base, updates[:3], [1.0, 2.0, 3.0])
    with_zero = run(FedAvg(), base, updates, [1.0, 2.0, 3.0, 0.0])
    for name in base:
        np.testing.assert_array_equal(with_zero[name], without[name])


def test_fedavg_result_is_repeatable_and_base_untouched() -> None:
    base = make_base()
    before = {n: b.copy() for n, b in base.items()}
    accumulator = FedAvg().start(base)
    for i, update in enumerate(make_updates(base, 3, 5)):
        accumulator.add(f"d{i}", update, 1.0 + i)
    first, second = accumulator.result(), accumulator.result()
    assert first is not None
    assert second is not None
    for name in base:
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_array_equal(base[name], before[name])


def test_refused_update_leaves_fedavg_state_unchanged() -> None:
    base = make_base()
    updates = make_updates(base, 2, 9)
    clean = run(FedAvg(), base, updates, [1.0, 3.0])
    accumulator = FedAvg().start(base)
    accumulator.add("a", updates[0], 1.0)
    hostile = {n: a.copy() for n, a in updates[1].items()}
    hostile["fc2.weight"][0, 0] = np.nan
    with pytest.raises(UpdateRejected) as info:
        accumulator.add("evil", hostile, 5.0)
    assert info.value.reason == "non-finite"
    assert "evil" in info.value.detail
    with pytest.raises(UpdateRejected):
        accumulator.add("evil", updates[1], -1.0)
    assert (accumulator.count, accumulator.total_weight) == (1, 1.0)
    accumulator.add("b", updates[1], 3.0)
    got = accumulator.result()
    assert got is not None
    for name in base:
        np.testing.assert_array_equal(got[name], clean[name])


def test_fedavg_is_independent_of_the_weights_scale() -> None:
    base = make_base()
    updates = make_updates(base, 3, 17)
    plain = run(FedAvg(), base, updates, [1.0, 2.0, 3.0])
    for factor in (5e-324, 1e-300, 1e300):
        # A running *sum* would underflow w·d to 0 for the tiny weights and overflow for 1e300.
        scaled = run(FedAvg(), base, updates, [factor, 2 * factor, 3 * factor])
        assert_tensors_close(scaled, plain)


def test_fedavg_rejects_total_weight_overflow() -> None:
    base = make_base()
    accumulator = FedAvg().start(base)
    accumulator.add("a", base, 1.7e308)
    with pytest.raises(UpdateRejected) as info:
        accumulator.add("b", base, 1.7e308)
    assert info.value.reason == "bad-weight"
    assert accumulator.count == 1


# --- clipping ---------------------------------------------------------------------------------


def test_clipping_bounds_one_update_to_max_norm() -> None:
    base = make_base()
    (update,) = make_updates(base, 1, 4, scale=10.0)
    assert delta_norm(update, base) > 5.0
    accumulator = FedAvg(max_norm=0.5).start(base)
    assert isinstance(accumulator, FedAvgAccumulator)
    accumulator.add("big", update, 3.0)
    got = accumulator.result()
    assert got is not None
    assert delta_norm(got, base) == pytest.approx(0.5, rel=1e-4)
    assert accumulator.clipped == 1
    # Clipping scales the delta: its direction is kept.
    direction = np.concatenate([(update[n].astype(np.float64) - base[n]).ravel() for n in base])
    clipped = np.concatenate([(got[n].astype(np.float64) - base[n]).ravel() for n in base])
    cosine = direction @ clipped / (np.linalg.norm(direction) * np.linalg.norm(clipped))
    assert cosine == pytest.approx(1.0, abs=1e-5)


def test_checked_tensors_fold_as_the_plain_ones_without_a_second_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = make_base()
    updates = make_updates(base, 4, 7, scale=3.0)
    plain = FedAvg(max_norm=1.0).start(base)
    checked = FedAvg(max_norm=1.0).start(base)
    measured = [checked.check(f"dev-{i}", u) for i, u in enumerate(updates)]
    assert [m.norm for m in measured] == pytest.approx([delta_norm(u, base) for u in updates])
    passes = {"check": 0, "distance": 0}

    def count(name: str, fn: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            passes[name] += 1
            return fn(*args)

        return wrapped

    monkeypatch.setattr(base_module, "check_tensors", count("check", base_module.check_tensors))
    monkeypatch.setattr(
        base_module, "squared_distance", count("distance", base_module.squared_distance)
    )
    for i, m in enumerate(measured):
        checked.add(f"dev-{i}", m, 2.0)
    assert passes == {"check": 0, "distance": 0}  # checked and measured once, by `check`
    for i, u in enumerate(updates):
        plain.add(f"dev-{i}", u, 2.0)
    assert passes["check"] == 4
    assert passes["distance"] == 4 * len(base)
    got, want = checked.result(), plain.result()
    assert got is not None
    assert want is not None
    assert_tensors_close(got, want)
    assert checked.clipped == plain.clipped == 4  # type: ignore[attr-defined]


def test_check_refuses_bad_tensors_with_the_update_key() -> None:
    base = make_base()
    accumulator = FedAvg().start(base)
    (update,) = make_updates(base, 1, 1)
    update["fc1.bias"] = update["fc1.bias"].copy()
    update["fc1.bias"][0] = np.nan
    with pytest.raises(UpdateRejected) as info:
        accumulator.check("dev-9", update)
    assert info.value.reason == "non-finite"
    assert "dev-9" in info.value.detail


@pytest.mark.parametrize("seed", range(3))
def test_clipped_average_delta_is_bounded(seed: int) -> None:
    base = make_base(seed)
    updates = make_updates(base, 9, seed, scale=3.0)
    weights = np.random.default_rng(seed).uniform(1, 10, size=9)
    got = run(FedAvg(max_norm=1.0), base, updates, weights)
    assert delta_norm(got, base) <= 1.0 + 1e-4


def test_clipping_leaves_small_deltas_alone() -> None:
    base = make_base()
    updates = make_updates(base, 5, 11, scale=1e-3)
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    plain = run(FedAvg(), base, updates, weights)
    clipped = run(FedAvg(max_norm=100.0), base, updates, weights)
    for name in base:
        np.testing.assert_array_equal(clipped[name], plain[name])


def test_clipping_bounds_a_hostile_device_pull() -> None:
    # One device claiming a huge delta moves the average by at most w·max_norm/W.
    base = make_base()
    honest = make_updates(base, 9, 3, scale=0.01)
    hostile = {n: b + np.float32(1e4) for n, b in base.items()}
    got = run(FedAvg(max_norm=0.1), base, [*honest, hostile], [1.0] * 10)
    assert delta_norm(got, base) <= 0.1 + 1e-4


# --- memory -----------------------------------------------------------------------------------


def test_fedavg_state_does_not_grow_with_updates() -> None:
    base = make_base()
    accumulator = FedAvg().start(base)
    params = sum(b.size for b in base.values())
    sizes = []
    for i, update in enumerate(make_updates(base, 64, 1)):
        accumulator.add(f"d{i}", update, 1.0)
        sizes.append(accumulator.nbytes)
    assert set(sizes) == {params * 4}  # one float32 mean per parameter, whatever the count


def test_fedavg_keeps_no_reference_to_updates() -> None:
    # Traced memory (numpy reports its buffers to tracemalloc) must not grow by an update's
    # size per update: the accumulator folds each update in and lets it go.
    shapes = {"big": (256, 256)}  # 256 KiB float32 per update
    base = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    accumulator = FedAvg().start(base)
    rng = np.random.default_rng(0)
    update_bytes = base["big"].nbytes
    gc.collect()
    tracemalloc.start()
    try:
        accumulator.add("warm-up", {"big": rng.standard_normal((256, 256), np.float32)}, 1.0)
        after_one = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            accumulator.add(f"d{i}", {"big": rng.standard_normal((256, 256), np.float32)}, 1.0)
        after_many = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after_many - after_one < update_bytes


def test_buffered_rules_state_grows_and_is_bounded() -> None:
    base = make_base()
    accumulator = CoordinateMedian(max_updates=3).start(base)
    one = sum(b.nbytes for b in base.values())
    updates = make_updates(base, 4, 2)
    for i in range(3):
        accumulator.add(f"d{i}", updates[i], 1.0)
        assert accumulator.nbytes == (i + 1) * one
    with pytest.raises(UpdateRejected) as info:
        accumulator.add("d3", updates[3], 1.0)
    assert info.value.reason == "too-many-updates"
    assert accumulator.count == 3
    # Zero-weight updates carry no vote and take no slot.
    accumulator.add("idle", updates[3], 0.0)
    assert accumulator.count == 4


# --- robust rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n"), [(0, 1), (1, 2), (2, 5), (3, 8)])
def test_median_equals_numpy_median(seed: int, n: int) -> None:
    base = make_base(seed)
    updates = make_updates(base, n, seed + 50)
    got = run(CoordinateMedian(), base, updates, [1.0] * n)
    want = {name: np.median(stacked(updates, name), axis=0) for name in base}
    assert_tensors_close(got, want, rtol=0)


@pytest.mark.parametrize(("seed", "n", "ratio"), [(0, 10, 0.1), (1, 10, 0.25), (2, 7, 0.2)])
def test_trimmed_mean_equals_scipy(seed: int, n: int, ratio: float) -> None:
    base = make_base(seed)
    updates = make_updates(base, n, seed + 60)
    got = run(TrimmedMean(trim_ratio=ratio), base, updates, [1.0] * n)
    want = {name: stats.trim_mean(stacked(updates, name), ratio, axis=0) for name in base}
    assert_tensors_close(got, want)


def test_trimmed_mean_with_zero_ratio_is_the_mean() -> None:
    base = make_base()
    updates = make_updates(base, 6, 8)
    got = run(TrimmedMean(trim_ratio=0.0), base, updates, [1.0] * 6)
    want = {name: stacked(updates, name).mean(axis=0) for name in base}
    assert_tensors_close(got, want)


@pytest.mark.parametrize("rule", [CoordinateMedian(), TrimmedMean(trim_ratio=0.2)])
def test_robust_rules_are_unweighted_and_order_independent(rule: AggregationRule) -> None:
    base = make_base()
    updates = make_updates(base, 9, 21)
    reference = run(rule, base, updates, [1.0] * 9)
    rng = np.random.default_rng(0)
    order = rng.permutation(9)
    shuffled = run(rule, base, [updates[i] for i in order], rng.uniform(1, 1e4, size=9))
    for name in base:
        np.testing.assert_array_equal(shuffled[name], reference[name])


@pytest.mark.parametrize("rule", [CoordinateMedian(), TrimmedMean(trim_ratio=0.2)])
def test_robust_rules_resist_one_outlier(rule: AggregationRule) -> None:
    base = make_base()
    honest = make_updates(base, 9, 4, scale=0.01)
    hostile = {n: b + np.float32(1e4) for n, b in base.items()}
    got = run(rule, base, [*honest, hostile], [1.0] * 10)
    assert delta_norm(got, base) < 1.0
    fedavg = run(FedAvg(), base, [*honest, hostile], [1.0] * 10)
    assert delta_norm(fedavg, base) > 100.0


@pytest.mark.parametrize("rule", [CoordinateMedian(), TrimmedMean()])
def test_robust_rules_keep_base_without_positive_weight(rule: AggregationRule) -> None:
    base = make_base()
    accumulator = rule.start(base)
    assert accumulator.result() is None
    accumulator.add("idle", make_updates(base, 1, 0)[0], 0.0)
    assert accumulator.result() is None


def test_robust_rules_copy_updates() -> None:
    # A device's arrays may be reused by the caller after add (a decode buffer).
    base = make_base()
    update = make_updates(base, 1, 1)[0]
    accumulator = CoordinateMedian().start(base)
    accumulator.add("d", update, 1.0)
    want = {n: a.copy() for n, a in update.items()}
    for array in update.values():
        array[...] = 0
    got = accumulator.result()
    assert got is not None
    for name in base:
        np.testing.assert_array_equal(got[name], want[name])


# --- accumulator checkpoints ------------------------------------------------------------------


RULES = [FedAvg(), FedAvg(max_norm=0.3), CoordinateMedian(), TrimmedMean(trim_ratio=0.2)]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.name}-{r.params()}")
def test_accumulator_state_round_trip_continues_identically(rule: AggregationRule) -> None:
    base = make_base()
    updates = make_updates(base, 8, 13, scale=0.5)
    weights = [3.0, 1.0, 0.0, 7.0, 2.0, 5.0, 1.0, 4.0]
    straight = rule.start(base)
    for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
        straight.add(f"d{i}", u, w)
    first = rule.start(base)
    for i in range(4):
        first.add(f"d{i}", updates[i], weights[i])
    state = first.state()
    meta = json.loads(json.dumps(state.meta))
    resumed = rule.restore(base, type(state)(meta, {k: a.copy() for k, a in state.arrays.items()}))
    assert (resumed.count, resumed.total_weight) == (first.count, first.total_weight)
    for i in range(4, 8):
        resumed.add(f"d{i}", updates[i], weights[i])
    got, want = resumed.result(), straight.result()
    assert got is not None
    assert want is not None
    for name in base:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("rule", RULES[1:], ids=lambda r: r.name)
def test_accumulator_state_that_does_not_fit_is_refused(rule: AggregationRule) -> None:
    base = make_base()
    accumulator = rule.start(base)
    accumulator.add("d", make_updates(base, 1, 0)[0], 1.0)
    state = accumulator.state()
    name = sorted(state.arrays)[0]
    bad_arrays = dict(state.arrays)
    bad_arrays[name] = np.zeros((2, 2, 2))
    with pytest.raises(SnapshotError):
        rule.restore(base, type(state)(state.meta, bad_arrays))
    with pytest.raises(SnapshotError):
        rule.restore(base, type(state)({**state.meta, "count": -1}, state.arrays))
    missing = {k: a for k, a in state.arrays.items() if k != name}
    with pytest.raises(SnapshotError):
        rule.restore(base, type(state)(state.meta, missing))


# --- registry ---------------------------------------------------------------------------------


def test_make_rule_builds_each_rule_by_name() -> None:
    assert make_rule("fedavg") == FedAvg()
    assert make_rule("fedavg", max_norm=2.0) == FedAvg(max_norm=2.0)
    assert make_rule("median", max_updates=10) == CoordinateMedian(max_updates=10)
    assert make_rule("trimmed-mean", trim_ratio=0.3) == TrimmedMean(trim_ratio=0.3)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rules_round_trip_through_json(rule: AggregationRule) -> None:
    assert rule_from_plain(json.loads(json.dumps(rule_to_plain(rule)))) == rule


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("krum", {}),
        ("fedavg", {"trim_ratio": 0.1}),
        ("fedavg", {"max_norm": 0.0}),
        ("fedavg", {"max_norm": float("inf")}),
        ("median", {"max_updates": 0}),
        ("median", {"max_updates": 2.5}),
        ("trimmed-mean", {"trim_ratio": 0.5}),
        ("trimmed-mean", {"trim_ratio": -0.1}),
    ],
)
def test_bad_rule_configuration_is_an_invalid_argument(name: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        make_rule(name, **kwargs)


def test_a_fedavg_checkpoint_of_float64_means_is_narrowed_on_restore() -> None:
    """Checkpoints written while the means were float64 still restore (then in float32)."""
    base = make_base()
    updates = make_updates(base, 2, 5)
    first = FedAvg().start(base)
    first.add("d0", updates[0], 2.0)
    state = first.state()
    wide = {name: array.astype(np.float64) for name, array in state.arrays.items()}
    resumed = FedAvg().restore(base, type(state)(state.meta, wide))
    assert {a.dtype for a in resumed.state().arrays.values()} == {np.dtype(np.float32)}
    first.add("d1", updates[1], 1.0)
    resumed.add("d1", updates[1], 1.0)
    got, want = resumed.result(), first.result()
    assert got is not None
    assert want is not None
    for name in base:
        np.testing.assert_array_equal(got[name], want[name])
