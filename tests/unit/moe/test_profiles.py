"""Client profiles: telemetry / status / round-outcome folding and the capacity thresholds."""

from __future__ import annotations

import math

import pytest

from moe.profiles import (
    ClientProfile,
    TelemetryReading,
    capacity_from_memory,
    fold_round_outcome,
    fold_status,
    fold_telemetry,
    staleness,
)


def reading(**kw: object) -> TelemetryReading:
    base: dict[str, object] = {
        "device_id": "dev-1",
        "device_type": 2,
        "compute_ms_per_sample": 10.0,
        "bandwidth_kbps": 1000.0,
        "memory_mb": 2048.0,
        "battery": 0.8,
        "num_samples": 120,
        "routing_histogram": (3.0, 1.0, 0.0, 0.0),
    }
    base.update(kw)
    return TelemetryReading(**base)  # type: ignore[arg-type]


def test_first_telemetry_seeds_the_profile() -> None:
    p = fold_telemetry(None, reading(), now=100.0)
    assert p.device_id == "dev-1"
    assert p.compute_ms_per_sample == 10.0
    assert p.bandwidth_kbps == 1000.0
    assert p.capacity == 2
    assert p.online
    assert p.last_seen == 100.0
    assert p.completion_rate == 1.0
    assert p.last_round == -1
    assert dict(p.expert_quality) == {}


def test_telemetry_ewma_arithmetic() -> None:
    p = fold_telemetry(None, reading(), now=1.0)
    p = fold_telemetry(
        p, reading(compute_ms_per_sample=20.0, bandwidth_kbps=2000.0), now=2.0, alpha=0.25
    )
    assert p.compute_ms_per_sample == pytest.approx(0.75 * 10.0 + 0.25 * 20.0)
    assert p.bandwidth_kbps == pytest.approx(0.75 * 1000.0 + 0.25 * 2000.0)
    p = fold_telemetry(p, reading(compute_ms_per_sample=20.0), now=3.0, alpha=0.25)
    assert p.compute_ms_per_sample == pytest.approx(0.75 * 12.5 + 0.25 * 20.0)
    # States are taken as reported, not smoothed.
    p = fold_telemetry(p, reading(memory_mb=4096.0, battery=0.1, num_samples=7), now=4.0)
    assert (p.memory_mb, p.capacity, p.battery, p.num_samples) == (4096.0, 3, 0.1, 7)


def test_empty_histogram_keeps_the_last_one() -> None:
    p = fold_telemetry(None, reading(), now=1.0)
    p = fold_telemetry(p, reading(routing_histogram=()), now=2.0)
    assert p.routing_histogram == (3.0, 1.0, 0.0, 0.0)
    assert p.affinity(4) == (0.75, 0.25, 0.0, 0.0)
    assert p.affinity(2) == (0.75, 0.25)
    assert p.affinity(6) == (0.75, 0.25, 0.0, 0.0, 0.0, 0.0)


def test_affinity_of_an_empty_histogram_is_zero() -> None:
    p = fold_telemetry(None, reading(routing_histogram=()), now=1.0)
    assert p.affinity(3) == (0.0, 0.0, 0.0)


def test_telemetry_of_another_device_is_refused() -> None:
    p = fold_telemetry(None, reading(), now=1.0)
    with pytest.raises(ValueError, match="dev-2"):
        fold_telemetry(p, reading(device_id="dev-2"), now=2.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"compute_ms_per_sample": 0.0}, "compute_ms_per_sample"),
        ({"bandwidth_kbps": math.inf}, "bandwidth_kbps"),
        ({"battery": 1.5}, "battery"),
        ({"num_samples": -1}, "num_samples"),
        ({"routing_histogram": (1.0, -1.0)}, "routing_histogram"),
    ],
)
def test_reading_validation(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reading(**kw)


@pytest.mark.parametrize(
    ("memory", "k"), [(64.0, 1), (1535.9, 1), (1536.0, 2), (3071.0, 2), (3072.0, 3), (8192.0, 3)]
)
def test_capacity_thresholds(memory: float, k: int) -> None:
    assert capacity_from_memory(memory) == k


def test_capacity_custom_thresholds() -> None:
    assert capacity_from_memory(100.0, (50.0, 75.0, 100.0)) == 4
    with pytest.raises(ValueError):
        capacity_from_memory(100.0, (75.0, 50.0))


def test_status_folding_and_staleness() -> None:
    p = fold_telemetry(None, reading(), now=10.0)
    off = fold_status(p, online=False, now=15.0)
    assert not off.online
    assert off.last_seen == 15.0
    assert staleness(off, 20.0) == 5.0
    assert staleness(off, 1.0) == 0.0
    # An old status arriving late does not move last_seen back.
    assert fold_status(off, online=True, now=12.0).last_seen == 15.0
    assert p.online  # the input profile is unchanged (values, not objects)


def test_round_outcome_quality_ema() -> None:
    p = fold_telemetry(None, reading(), now=1.0)
    p = fold_round_outcome(
        p,
        round=3,
        assigned=True,
        completed_in_time=True,
        expert_losses={0: 0.5, 2: 1.0},
        alpha=0.5,
        beta=2.0,
    )
    assert p.expert_quality[0] == pytest.approx(math.exp(-1.0))  # first measurement seeds
    assert p.expert_quality[2] == pytest.approx(math.exp(-2.0))
    assert dict(p.expert_trials) == {0: 1, 2: 1}
    p = fold_round_outcome(
        p,
        round=4,
        assigned=True,
        completed_in_time=False,
        expert_losses={0: 0.0},
        alpha=0.5,
        beta=2.0,
    )
    assert p.expert_quality[0] == pytest.approx(0.5 * math.exp(-1.0) + 0.5 * 1.0)
    assert p.expert_quality[2] == pytest.approx(math.exp(-2.0))  # untrained keeps its value
    assert dict(p.expert_trials) == {0: 2, 2: 1}
    assert (p.rounds_assigned, p.rounds_completed, p.last_round) == (2, 1, 4)
    assert p.completion_rate == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)


def test_round_outcome_when_not_assigned() -> None:
    p = fold_telemetry(None, reading(), now=1.0)
    q = fold_round_outcome(p, round=1, assigned=False, completed_in_time=False, expert_losses={})
    assert q == p


def test_round_outcome_validation() -> None:
    p = fold_telemetry(None, reading(), now=1.0)
    with pytest.raises(ValueError, match="loss"):
        fold_round_outcome(
            p, round=1, assigned=True, completed_in_time=True, expert_losses={1: math.nan}
        )
    with pytest.raises(ValueError, match="alpha"):
        fold_round_outcome(
            p, round=1, assigned=True, completed_in_time=True, expert_losses={}, alpha=0.0
        )


def test_profile_is_immutable() -> None:
    p = ClientProfile("d", 0, 1.0, 1.0, 1.0, 1, 1.0, True, 1, expert_quality={})
    with pytest.raises(AttributeError):
        p.online = False  # type: ignore[misc]
    q = fold_round_outcome(p, round=0, assigned=True, completed_in_time=True, expert_losses={0: 1})
    with pytest.raises(TypeError):
        q.expert_quality[0] = 1.0  # type: ignore[index]
