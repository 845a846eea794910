"""PartAggregator: verdicts, round lifecycle, dedup, versions, snapshot/restore."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from moe.aggregation import (
    VERDICT_REASONS,
    CoordinateMedian,
    FedAvg,
    PartAggregator,
    PartSnapshot,
    RoundStateError,
    SnapshotError,
    TrimmedMean,
    Verdict,
)
from moe.aggregation.base import AggregationRule
from moe.errors import InvalidArgumentError, LayoutError
from moe.tensors import TensorSpec

PART = "expert-1"
LAYOUT = {
    "fc1.weight": TensorSpec((6, 4)),
    "fc1.bias": TensorSpec((6,)),
    "gate.weight": TensorSpec((4,)),
}
Tensors = dict[str, NDArray[Any]]


def initial(seed: int = 0) -> Tensors:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s.shape).astype(np.float32) for n, s in LAYOUT.items()}


def trained(base: Any, seed: int, scale: float = 0.1) -> Tensors:
    rng = np.random.default_rng(seed)
    return {
        n: (base[n] + scale * rng.standard_normal(base[n].shape)).astype(np.float32) for n in LAYOUT
    }


def aggregator(rule: AggregationRule | None = None, **kwargs: Any) -> PartAggregator:
    return PartAggregator(PART, LAYOUT, initial(), rule or FedAvg(), **kwargs)


def assert_same(got: Any, want: Any) -> None:
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


APPLIED = Verdict("applied")


def test_a_round_produces_the_weighted_average_and_a_new_version() -> None:
    agg = aggregator()
    base = agg.weights
    assert agg.open_round(1)
    updates = [trained(base, s) for s in range(4)]
    weights = [10.0, 30.0, 0.0, 60.0]
    for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
        assert agg.offer(1, f"dev-{i}", u, w, base_version=0).status == "applied"
    assert agg.pending == 4
    assert agg.pending_weight == 100.0
    version, tensors, stats = agg.close()
    assert version == agg.version == 1
    for name in LAYOUT:
        want = np.average(
            np.stack([u[name] for u in updates]).astype(np.float64), axis=0, weights=weights
        )
        np.testing.assert_allclose(tensors[name], want, rtol=1e-6, atol=1e-7)
        assert tensors[name].dtype == np.float32
    assert stats.updated
    assert (stats.round, stats.base_version, stats.version) == (1, 0, 1)
    assert (stats.applied, stats.total_weight) == (4, 100.0)
    assert stats.update_norm > 0
    assert stats.verdicts == {"applied": 4}
    assert agg.current_round is None
    assert agg.pending == 0


def test_next_round_builds_on_the_new_version() -> None:
    agg = aggregator()
    agg.open_round(1)
    agg.offer(1, "a", trained(agg.weights, 1), 1.0, 0)
    _, first, _ = agg.close()
    agg.open_round(2)
    stale = agg.offer(2, "b", trained(initial(), 2), 1.0, base_version=0)
    assert (stale.status, stale.reason) == ("rejected", "stale")
    update = trained(first, 3)
    assert agg.offer(2, "b", update, 5.0, base_version=1) == Verdict(
        "applied", "", "b/expert-1 round 2"
    )
    version, tensors, _ = agg.close()
    assert version == 2
    assert_same(tensors, update)


def test_the_same_update_twice_is_applied_once() -> None:
    agg = aggregator()
    base = agg.weights
    agg.open_round(1)
    update, other = trained(base, 1), trained(base, 2)
    assert agg.offer(1, "dev", update, 3.0, 0).status == "applied"
    again = agg.offer(1, "dev", update, 3.0, 0)
    assert again.status == "duplicate"
    # The key decides, not the content: a different payload under the same key is a duplicate.
    assert agg.offer(1, "dev", other, 9.0, 0).status == "duplicate"
    assert (agg.pending, agg.pending_weight) == (1, 3.0)
    _, tensors, stats = agg.close()
    assert_same(tensors, update)
    assert stats.verdicts == {"applied": 1, "duplicate": 2}
    # A resend after the round closed is still reported as a duplicate, not late.
    assert agg.offer(1, "dev", update, 3.0, 0).status == "duplicate"


def test_round_order_verdicts() -> None:
    agg = aggregator(ledger_window=2)
    update = trained(agg.weights, 1)
    assert agg.offer(1, "a", update, 1.0, 0).reason == "future-round"  # nothing opened yet
    agg.open_round(1)
    assert agg.offer(2, "a", update, 1.0, 0) == Verdict(
        "rejected", "future-round", "a/expert-1 round 2: last opened 1"
    )
    agg.close()
    late = agg.offer(1, "b", update, 1.0, 0)
    assert (late.status, late.reason) == ("late", "round-closed")
    agg.open_round(2)
    assert agg.offer(1, "c", update, 1.0, 0).reason == "round-closed"
    agg.close()
    agg.open_round(5)
    assert agg.offer(4, "c", update, 1.0, 0).reason == "round-closed"
    # Round 3 is older than the two-round window ending at 5: the ledger cannot tell.
    stale = agg.offer(3, "c", update, 1.0, 0)
    assert (stale.status, stale.reason) == ("late", "stale")
    assert agg.offer(1, "c", update, 1.0, 0).reason == "stale"


def test_base_version_ahead_of_the_part_is_rejected() -> None:
    agg = aggregator(version=4)
    agg.open_round(1)
    verdict = agg.offer(1, "a", trained(agg.weights, 1), 1.0, base_version=5)
    assert (verdict.status, verdict.reason) == ("rejected", "unknown-version")


def bad(name: str, value: Any) -> Tensors:
    tensors = trained(initial(), 1)
    tensors[name] = value
    return tensors


def with_nan() -> Tensors:
    tensors = trained(initial(), 1)
    tensors["fc1.bias"][2] = np.nan
    return tensors


def with_inf() -> Tensors:
    tensors = trained(initial(), 1)
    tensors["gate.weight"][0] = -np.inf
    return tensors


def missing() -> Tensors:
    tensors = trained(initial(), 1)
    del tensors["gate.weight"]
    return tensors


@pytest.mark.parametrize(
    ("tensors", "weight", "reason"),
    [
        pytest.param(with_nan(), 1.0, "non-finite", id="nan"),
        pytest.param(with_inf(), 1.0, "non-finite", id="inf"),
        pytest.param(bad("fc1.weight", np.zeros((4, 6), np.float32)), 1.0, "wrong-shape", id="s"),
        pytest.param(bad("fc1.bias", np.zeros(6, np.float16)), 1.0, "wrong-dtype", id="dtype"),
        pytest.param(missing(), 1.0, "missing-tensor", id="missing"),
        pytest.param(bad("extra", np.zeros(1, np.float32)), 1.0, "extra-tensor", id="extra"),
        pytest.param(trained(initial(), 1), -3.0, "bad-weight", id="negative-weight"),
        pytest.param(trained(initial(), 1), float("nan"), "bad-weight", id="nan-weight"),
    ],
)
def test_hostile_updates_are_rejected_and_change_nothing(
    tensors: Tensors, weight: float, reason: str
) -> None:
    agg = aggregator()
    agg.open_round(1)
    honest = trained(agg.weights, 7)
    agg.offer(1, "honest", honest, 2.0, 0)
    ledger_before = agg.ledger.to_plain()
    verdict = agg.offer(1, "evil", tensors, weight, 0)
    assert (verdict.status, verdict.reason) == ("rejected", reason)
    assert "evil" in verdict.detail
    assert (agg.pending, agg.pending_weight) == (1, 2.0)
    assert agg.ledger.to_plain() == ledger_before
    # Not recorded: the device may fix the update and resend it under the same key.
    assert agg.offer(1, "evil", trained(agg.weights, 8), 1.0, 0).status == "applied"
    _, _, stats = agg.close()
    assert stats.verdicts == {"applied": 2, f"rejected/{reason}": 1}


def test_zero_total_weight_keeps_the_base_and_the_version() -> None:
    agg = aggregator(version=3)
    before = {n: a.copy() for n, a in agg.weights.items()}
    agg.open_round(1)
    agg.offer(1, "idle", trained(agg.weights, 1), 0.0, 3)
    version, tensors, stats = agg.close()
    assert version == 3
    assert_same(tensors, before)
    assert not stats.updated
    assert (stats.applied, stats.total_weight, stats.update_norm) == (1, 0.0, 0.0)


def test_empty_round_keeps_the_base() -> None:
    agg = aggregator()
    agg.open_round(1)
    version, _, stats = agg.close()
    assert version == 0
    assert not stats.updated
    assert stats.applied == 0


def test_round_lifecycle_misuse() -> None:
    agg = aggregator()
    with pytest.raises(RoundStateError):
        agg.close()
    assert agg.open_round(2)
    assert not agg.open_round(2)  # a replayed RoundOpened is harmless
    assert not agg.open_round(1)
    with pytest.raises(RoundStateError):
        agg.open_round(3)  # round 2 must be closed (and published) first
    agg.close()
    with pytest.raises(RoundStateError):
        agg.close()
    assert not agg.open_round(2)  # a closed round never reopens
    assert agg.open_round(3)


def test_weights_are_copied_in_and_read_only_out() -> None:
    weights = initial()
    agg = PartAggregator(PART, LAYOUT, weights, FedAvg())
    weights["fc1.bias"][:] = 99.0
    assert not np.any(agg.weights["fc1.bias"] == 99.0)
    with pytest.raises(ValueError, match="read-only"):
        agg.weights["fc1.bias"][0] = 1.0
    agg.open_round(1)
    agg.offer(1, "a", trained(agg.weights, 1), 1.0, 0)
    _, tensors, _ = agg.close()
    with pytest.raises(ValueError, match="read-only"):
        tensors["fc1.bias"][0] = 1.0


def test_construction_checks_layout_and_settings() -> None:
    wrong = initial()
    wrong["fc1.bias"] = np.zeros(5, np.float32)
    with pytest.raises(LayoutError):
        PartAggregator(PART, LAYOUT, wrong, FedAvg())
    with pytest.raises(InvalidArgumentError):
        PartAggregator(PART, LAYOUT, initial(), FedAvg(), version=-1)
    with pytest.raises(InvalidArgumentError):
        PartAggregator(PART, LAYOUT, initial(), FedAvg(), ledger_window=0)


def test_robust_rule_buffer_bound_becomes_a_verdict() -> None:
    agg = aggregator(CoordinateMedian(max_updates=2))
    agg.open_round(1)
    for device in ("a", "b"):
        assert agg.offer(1, device, trained(agg.weights, 1), 1.0, 0).status == "applied"
    verdict = agg.offer(1, "c", trained(agg.weights, 2), 1.0, 0)
    assert (verdict.status, verdict.reason) == ("rejected", "too-many-updates")


# --- snapshot / restore -----------------------------------------------------------------------


def through_storage(snapshot: PartSnapshot) -> PartSnapshot:
    """What a checkpoint file gives back: JSON state, copied arrays."""
    return PartSnapshot(
        state=json.loads(json.dumps(snapshot.state)),
        weights={n: np.array(a) for n, a in snapshot.weights.items()},
        accumulator={k: np.array(a) for k, a in snapshot.accumulator.items()},
    )


def script(agg: PartAggregator, steps: list[tuple[Any, ...]]) -> list[Any]:
    """Run offers / opens / closes and collect what each returned."""
    out: list[Any] = []
    for step in steps:
        if step[0] == "open":
            out.append(agg.open_round(step[1]))
        elif step[0] == "close":
            version, tensors, stats = agg.close()
            out.append((version, {n: a.copy() for n, a in tensors.items()}, stats))
        else:
            _, round_id, device, seed, weight, base_version = step
            update = trained(agg.weights, seed, scale=0.5)
            out.append(agg.offer(round_id, device, update, weight, base_version))
    return out


BEFORE = [
    ("open", 1),
    ("offer", 1, "a", 1, 3.0, 0),
    ("offer", 1, "b", 2, 1.0, 0),
    ("close",),
    ("open", 2),
    ("offer", 2, "a", 3, 2.0, 1),
    ("offer", 2, "c", 4, 5.0, 1),
    ("offer", 2, "c", 4, 5.0, 1),
]
AFTER = [
    ("open", 2),  # replayed after the restart
    ("offer", 2, "a", 3, 2.0, 1),  # redelivered: duplicate
    ("offer", 1, "b", 2, 1.0, 0),  # resent after its round closed: duplicate
    ("offer", 2, "d", 5, 4.0, 1),
    ("offer", 2, "e", 6, 0.0, 1),
    ("offer", 2, "f", 7, 1.0, 0),  # stale
    ("close",),
    ("open", 3),
    ("offer", 3, "a", 8, 1.0, 2),
    ("close",),
]


@pytest.mark.parametrize(
    "rule",
    [FedAvg(), FedAvg(max_norm=0.5), CoordinateMedian(), TrimmedMean(trim_ratio=0.25)],
    ids=lambda r: r.name,
)
def test_snapshot_restore_mid_round_continues_identically(rule: AggregationRule) -> None:
    straight = aggregator(rule)
    script(straight, BEFORE)
    want = script(straight, AFTER)

    first = aggregator(rule)
    script(first, BEFORE)
    restored = PartAggregator.restore(through_storage(first.snapshot()), LAYOUT)
    assert restored.rule == rule
    assert (restored.version, restored.current_round, restored.pending) == (1, 2, 2)
    got = script(restored, AFTER)

    assert [v for v in got if isinstance(v, Verdict | bool)] == [
        v for v in want if isinstance(v, Verdict | bool)
    ]
    closes = [(g, w) for g, w in zip(got, want, strict=True) if isinstance(g, tuple)]
    assert len(closes) == 2
    for (g_version, g_tensors, g_stats), (w_version, w_tensors, w_stats) in closes:
        assert g_version == w_version
        assert_same(g_tensors, w_tensors)
        assert g_stats == w_stats
    assert restored.ledger.to_plain() == straight.ledger.to_plain()


def test_snapshot_between_rounds_may_switch_rule() -> None:
    agg = aggregator()
    script(agg, BEFORE[:4])
    snapshot = through_storage(agg.snapshot())
    assert snapshot.accumulator == {}
    assert snapshot.state["accumulator"] is None
    restored = PartAggregator.restore(snapshot, LAYOUT, CoordinateMedian())
    assert restored.rule == CoordinateMedian()
    assert restored.version == 1
    assert_same(restored.weights, agg.weights)
    assert restored.offer(1, "a", trained(agg.weights, 1), 3.0, 0).status == "duplicate"


def test_snapshot_mid_round_refuses_another_rule() -> None:
    agg = aggregator()
    script(agg, BEFORE)
    with pytest.raises(SnapshotError):
        PartAggregator.restore(through_storage(agg.snapshot()), LAYOUT, TrimmedMean())
    # Same rule, other parameters: the open accumulator still fits.
    restored = PartAggregator.restore(agg.snapshot(), LAYOUT, FedAvg(max_norm=1.0))
    assert restored.pending == 2


def test_snapshot_does_not_share_open_state() -> None:
    agg = aggregator()
    script(agg, BEFORE)
    snapshot = agg.snapshot()
    saved = {k: a.copy() for k, a in snapshot.accumulator.items()}
    agg.offer(2, "z", trained(agg.weights, 9), 7.0, 1)
    assert_same(snapshot.accumulator, saved)
    assert snapshot.state["accumulator"]["count"] == 2


def test_restore_checks_the_layout() -> None:
    agg = aggregator()
    other = {**LAYOUT, "fc1.bias": TensorSpec((7,))}
    with pytest.raises(LayoutError):
        PartAggregator.restore(agg.snapshot(), other)


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"part": 7},
        {"version": "1"},
        {"open_round": "2"},
        {"open_round": 1},  # not the last round
        {"rule": {"name": "krum", "params": {}}},
        {"rule": "fedavg"},
        {"ledger": {"format": 1}},
        {"verdicts": {"applied": -1}},
        {"accumulator": None},
        {"accumulator": {"count": 2}},
    ],
)
def test_malformed_snapshot_is_a_snapshot_error(change: dict[str, Any]) -> None:
    agg = aggregator()
    script(agg, BEFORE)
    snapshot = through_storage(agg.snapshot())
    PartAggregator.restore(snapshot, LAYOUT)
    broken = PartSnapshot({**snapshot.state, **change}, snapshot.weights, snapshot.accumulator)
    with pytest.raises(SnapshotError):
        PartAggregator.restore(broken, LAYOUT)


@pytest.mark.parametrize(
    ("round_id", "device", "base_version"),
    [(1.0, "a", 0), (True, "a", 0), (1, "", 0), (1, 7, 0), (1, "a", 0.0), (1, "a", None)],
)
def test_malformed_keys_are_rejected(round_id: Any, device: Any, base_version: Any) -> None:
    agg = aggregator()
    agg.open_round(1)
    verdict = agg.offer(round_id, device, trained(agg.weights, 1), 1.0, base_version)
    assert (verdict.status, verdict.reason) == ("rejected", "bad-key")
    assert len(agg.ledger) == 0


def test_numpy_integers_are_accepted_and_checkpoint_as_ints() -> None:
    agg = aggregator()
    assert agg.open_round(np.int64(1))
    verdict = agg.offer(np.int64(1), "a", trained(agg.weights, 1), 1.0, np.int32(0))
    assert verdict.status == "applied"
    state = json.loads(json.dumps(agg.snapshot().state))
    assert state["ledger"]["keys"] == [[1, "a", PART]]
    with pytest.raises(RoundStateError):
        agg.open_round(2.0)  # type: ignore[arg-type]


def test_every_verdict_reason_is_declared() -> None:
    assert {"non-finite", "stale", "round-closed", "too-many-updates"} <= VERDICT_REASONS
