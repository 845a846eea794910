"""What the aggregator trusts of a device: assignments, weight caps, adaptive clipping."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from moe.aggregation import PartAggregator, PartSnapshot, make_rule, rule_from_plain
from moe.aggregation.clipping import ClippedFedAvg, NormHistory, clip_bound
from moe.errors import InvalidArgumentError
from moe.tensors import TensorSpec

PART = "expert-2"
LAYOUT = {"w": TensorSpec((3, 4)), "b": TensorSpec((3,))}
Tensors = dict[str, NDArray[Any]]


def base() -> Tensors:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(s.shape).astype(np.float32) for n, s in LAYOUT.items()}


def shifted(tensors: Any, delta_norm: float, seed: int = 1) -> Tensors:
    """`tensors` moved by a random delta of exactly `delta_norm` (over all tensors)."""
    rng = np.random.default_rng(seed)
    deltas = {n: rng.standard_normal(tensors[n].shape) for n in LAYOUT}
    norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values()))
    return {n: (tensors[n] + deltas[n] * delta_norm / norm).astype(np.float32) for n in LAYOUT}


def distance(a: Any, b: Any) -> float:
    return math.sqrt(sum(float(np.sum((np.float64(a[n]) - b[n]) ** 2)) for n in LAYOUT))


# -- assignments and weight caps ------------------------------------------------------------


def test_an_unassigned_device_is_rejected_and_changes_nothing() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    agg.open_round(1, {"dev-a": 100})
    verdict = agg.offer(1, "dev-x", shifted(agg.weights, 1.0), 50.0, base_version=0)
    assert (verdict.status, verdict.reason) == ("rejected", "unassigned")
    assert agg.pending == 0
    _, tensors, stats = agg.close()
    assert not stats.updated
    assert stats.verdicts == {"rejected/unassigned": 1}
    assert distance(tensors, base()) == 0.0


def test_an_assigned_device_within_its_cap_is_applied() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    agg.open_round(1, {"dev-a": 100})
    assert agg.offer(1, "dev-a", shifted(agg.weights, 1.0), 100.0, base_version=0).status == (
        "applied"
    )


def test_a_weight_over_the_cap_is_rejected_without_effect() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    agg.open_round(1, {"dev-a": 100, "dev-b": 40})
    honest = shifted(agg.weights, 1.0, seed=1)
    assert agg.offer(1, "dev-a", honest, 60.0, base_version=0).status == "applied"
    verdict = agg.offer(1, "dev-b", shifted(agg.weights, 1.0, seed=2), 4000.0, base_version=0)
    assert (verdict.status, verdict.reason) == ("rejected", "over-weight")
    _, tensors, _ = agg.close()
    assert distance(tensors, honest) < 1e-6  # only dev-a counted


def test_a_rejected_over_weight_update_can_be_resent_honestly() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    agg.open_round(1, {"dev-a": 10})
    update = shifted(agg.weights, 1.0)
    assert agg.offer(1, "dev-a", update, 11.0, base_version=0).reason == "over-weight"
    assert agg.offer(1, "dev-a", update, 10.0, base_version=0).status == "applied"


def test_a_malformed_weight_is_bad_weight_not_a_crash() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    agg.open_round(1, {"dev-a": 10})
    verdict = agg.offer(1, "dev-a", shifted(agg.weights, 1.0), "many", base_version=0)  # type: ignore[arg-type]
    assert (verdict.status, verdict.reason) == ("rejected", "bad-weight")


def test_assignments_hold_for_their_round_only() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    agg.open_round(1, {"dev-a": 10})
    agg.close()
    agg.open_round(2, {"dev-b": 10})
    w = agg.weights
    assert agg.offer(2, "dev-a", shifted(w, 1.0), 5.0, base_version=0).reason == "unassigned"
    assert agg.offer(2, "dev-b", shifted(w, 1.0), 5.0, base_version=0).status == "applied"


def test_without_assignments_nothing_is_checked() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    agg.open_round(1)
    assert agg.offer(1, "anyone", shifted(agg.weights, 1.0), 1e6, base_version=0).status == (
        "applied"
    )


@pytest.mark.parametrize("cap", [-1.0, math.inf, math.nan, "10", True])
def test_a_bad_cap_is_refused_at_open(cap: object) -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    with pytest.raises(InvalidArgumentError):
        agg.open_round(1, {"dev-a": cap})  # type: ignore[dict-item]
    assert agg.current_round is None


def test_assignments_survive_a_snapshot_round_trip() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("clipped-fedavg"))
    agg.open_round(1, {"dev-a": 10, "dev-b": 20})
    assert agg.offer(1, "dev-a", shifted(agg.weights, 1.0), 10.0, base_version=0).status == (
        "applied"
    )
    snap = agg.snapshot()
    state = json.loads(json.dumps(snap.state))
    restored = PartAggregator.restore(PartSnapshot(state, snap.weights, snap.accumulator), LAYOUT)
    assert restored.assigned == {"dev-a": 10.0, "dev-b": 20.0}
    w = restored.weights
    assert restored.offer(1, "dev-c", shifted(w, 1.0), 1.0, base_version=0).reason == "unassigned"
    assert restored.offer(1, "dev-b", shifted(w, 1.0), 21.0, base_version=0).reason == (
        "over-weight"
    )
    assert restored.offer(1, "dev-a", shifted(w, 1.0), 1.0, base_version=0).status == "duplicate"


# -- the clipping bound rule ----------------------------------------------------------------


def test_the_bound_is_a_multiple_of_the_median_norm() -> None:
    assert clip_bound([1.0, 3.0, 2.0], multiplier=2.0, min_history=3) == 4.0
    assert clip_bound([1.0, 2.0, 3.0, 100.0], multiplier=1.5, min_history=1) == 3.75


def test_no_bound_without_enough_history_or_with_zero_norms() -> None:
    assert clip_bound([1.0, 2.0], multiplier=2.0, min_history=3) is None
    assert clip_bound([], multiplier=2.0, min_history=1) is None
    assert clip_bound([0.0, 0.0, 0.0], multiplier=2.0, min_history=1) is None


def test_a_minority_of_huge_norms_does_not_move_the_bound_much() -> None:
    honest = [1.0] * 8
    assert clip_bound([*honest, 1e6, 1e6], 2.0, 3) == 2.0


def test_the_history_keeps_its_window_and_round_trips() -> None:
    history = NormHistory(3, [1.0, 2.0])
    history.extend([3.0, 4.0])
    assert history.norms == (2.0, 3.0, 4.0)
    again = NormHistory.from_plain(json.loads(json.dumps(history.to_plain())))
    assert again.norms == history.norms
    assert again.window == 3
    with pytest.raises(InvalidArgumentError):
        history.extend([math.nan])


@pytest.mark.parametrize(
    "params",
    [{"multiplier": 0}, {"multiplier": math.inf}, {"window": 0}, {"min_history": 0},
     {"reject_above": 0.5}, {"reject_above": math.nan}],
)  # fmt: skip
def test_bad_clipping_parameters_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        make_rule("clipped-fedavg", **params)


def test_the_rule_round_trips_through_plain_data() -> None:
    rule = ClippedFedAvg(multiplier=3.0, window=10, min_history=2)
    assert rule_from_plain({"name": rule.name, "params": rule.params()}) == rule


# -- adaptive clipping in the aggregator ----------------------------------------------------


def _round(agg: PartAggregator, r: int, norms: list[float]) -> Tensors:
    agg.open_round(r)
    w = agg.weights
    for i, norm in enumerate(norms):
        update = shifted(w, norm, seed=10 * r + i)
        assert agg.offer(r, f"dev-{i}", update, 1.0, base_version=agg.version).status == ("applied")
    return dict(agg.close().tensors)


def test_the_first_rounds_are_not_clipped_then_the_bound_follows_the_history() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), ClippedFedAvg(multiplier=2.0, min_history=3))
    _round(agg, 1, [1.0, 1.0])
    assert agg.norm_history == pytest.approx((1.0, 1.0))
    agg.open_round(2)
    assert agg.clip_bound is None  # two norms < min_history
    agg.close()
    _round(agg, 3, [1.0])
    agg.open_round(4)
    assert agg.clip_bound == pytest.approx(2.0)


def test_a_scaled_update_is_clipped_to_the_bound() -> None:
    rule = ClippedFedAvg(multiplier=2.0, min_history=3, reject_above=None)
    agg = PartAggregator(PART, LAYOUT, base(), rule)
    _round(agg, 1, [1.0, 1.0, 1.0])
    before = dict(agg.weights)
    agg.open_round(2)
    attack = shifted(before, 100.0, seed=99)
    assert agg.offer(2, "bad", attack, 1.0, base_version=1).status == "applied"
    _, tensors, stats = agg.close()
    assert stats.clipped == 1
    assert stats.clip_bound == pytest.approx(2.0)
    assert distance(tensors, before) == pytest.approx(2.0, rel=1e-5)


def test_unclipped_fedavg_lets_the_scaled_update_through() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), make_rule("fedavg"))
    _round(agg, 1, [1.0, 1.0, 1.0])
    before = dict(agg.weights)
    agg.open_round(2)
    agg.offer(2, "bad", shifted(before, 100.0, seed=99), 1.0, base_version=1)
    _, tensors, _ = agg.close()
    assert distance(tensors, before) == pytest.approx(100.0, rel=1e-5)


def test_the_history_does_not_depend_on_arrival_order() -> None:
    def run(order: list[int]) -> tuple[float, ...]:
        agg = PartAggregator(PART, LAYOUT, base(), ClippedFedAvg())
        agg.open_round(1)
        w = agg.weights
        for i in order:
            agg.offer(1, f"dev-{i}", shifted(w, float(i + 1), seed=i), 1.0, base_version=0)
        agg.close()
        return agg.norm_history

    assert run([0, 1, 2]) == run([2, 0, 1])


def test_clipping_state_survives_a_restart_mid_round() -> None:
    rule = ClippedFedAvg(multiplier=2.0, min_history=3, reject_above=None)
    agg = PartAggregator(PART, LAYOUT, base(), rule)
    _round(agg, 1, [1.0, 1.0, 1.0])
    agg.open_round(2)
    w = dict(agg.weights)
    agg.offer(2, "dev-0", shifted(w, 50.0, seed=5), 1.0, base_version=1)
    snap = agg.snapshot()
    state = json.loads(json.dumps(snap.state))
    restored = PartAggregator.restore(PartSnapshot(state, snap.weights, snap.accumulator), LAYOUT)
    assert restored.clip_bound == agg.clip_bound == pytest.approx(2.0)
    restored.offer(2, "dev-1", shifted(w, 50.0, seed=6), 1.0, base_version=1)
    agg.offer(2, "dev-1", shifted(w, 50.0, seed=6), 1.0, base_version=1)
    want, got = agg.close(), restored.close()
    assert got.stats.clipped == want.stats.clipped == 2
    assert distance(got.tensors, want.tensors) == 0.0
    assert restored.norm_history == agg.norm_history


def test_a_gross_outlier_is_rejected_not_clipped() -> None:
    rule = ClippedFedAvg(multiplier=2.0, min_history=3, reject_above=2.0)
    agg = PartAggregator(PART, LAYOUT, base(), rule)
    _round(agg, 1, [1.0, 1.0, 1.0])
    before = dict(agg.weights)
    agg.open_round(2)
    assert agg.clip_bound == pytest.approx(2.0)
    clipped = agg.offer(2, "big", shifted(before, 3.9, seed=7), 1.0, base_version=1)
    outlier = agg.offer(2, "huge", shifted(before, 4.1, seed=8), 1.0, base_version=1)
    assert clipped.status == "applied"
    assert (outlier.status, outlier.reason) == ("rejected", "outlier-norm")
    _, tensors, stats = agg.close()
    assert stats.clipped == 1
    assert distance(tensors, before) == pytest.approx(2.0, rel=1e-5)  # only the clipped one
    assert max(agg.norm_history) == pytest.approx(3.9, rel=1e-5)  # the outlier's norm is not kept


def test_no_outlier_rejection_before_there_is_a_bound() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), ClippedFedAvg(reject_above=2.0))
    agg.open_round(1)
    assert agg.offer(1, "dev", shifted(agg.weights, 1e3), 1.0, base_version=0).status == ("applied")


def test_a_malformed_update_is_refused_by_validation_before_its_norm() -> None:
    agg = PartAggregator(PART, LAYOUT, base(), ClippedFedAvg(reject_above=2.0))
    agg.open_round(1)
    bad = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    assert agg.offer(1, "dev", bad, 1.0, base_version=0).reason == "wrong-shape"
