"""Seeded fleet draws, availability, the round-time model and the default deadline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moe.data import make_regime
from moe.fleet import (
    DeviceCapability,
    FleetSpec,
    capacity_from_memory,
    compute_cost_factor,
    deadline_capacity,
    make_fleet,
    online_devices,
    online_probability,
    round_time_s,
)
from moe.model import MoEConfig
from moe.parts import model_layout, part_nbytes

PART_BYTES = part_nbytes(model_layout(MoEConfig()))


def _device(**changes: float) -> DeviceCapability:
    base = DeviceCapability(
        device_id=0,
        compute_ms_per_sample=4.0,
        bandwidth_kbps=4000.0,
        memory_mb=4096.0,
        capacity=3,
        battery=0.5,
        availability=0.4,
        phase=0.0,
    )
    return dataclasses.replace(base, **changes)


def test_fleet_is_seeded() -> None:
    assert make_fleet(50, seed=3) == make_fleet(50, seed=3)
    assert make_fleet(50, seed=3) != make_fleet(50, seed=4)
    assert [c.device_id for c in make_fleet(5, 0)] == [0, 1, 2, 3, 4]


def test_fleet_draws_stay_in_the_documented_ranges() -> None:
    spec = FleetSpec()
    fleet = make_fleet(2000, seed=0, spec=spec)
    compute = np.array([c.compute_ms_per_sample for c in fleet])
    bandwidth = np.array([c.bandwidth_kbps for c in fleet])
    capacity = np.array([c.capacity for c in fleet])
    avail = np.array([c.availability for c in fleet])
    assert spec.compute_range_ms[0] <= compute.min() <= compute.max() <= spec.compute_range_ms[1]
    assert np.median(compute) == pytest.approx(spec.compute_median_ms, rel=0.1)
    assert np.median(bandwidth) == pytest.approx(spec.bandwidth_median_kbps, rel=0.1)
    assert np.percentile(bandwidth, 95) / np.percentile(bandwidth, 5) > 10  # wide spread
    assert set(capacity.tolist()) == {1, 2, 3}
    shares = np.bincount(capacity, minlength=4)[1:] / capacity.size
    np.testing.assert_allclose(shares, [0.32, 0.43, 0.25], atol=0.04)
    assert all(0.0 <= c.battery <= 1.0 and 0.0 <= c.phase < 1.0 for c in fleet)
    assert spec.availability_range[0] <= avail.min() <= avail.max() <= spec.availability_range[1]
    assert avail.mean() == pytest.approx(1 / 3, abs=0.03)


def test_capacity_thresholds() -> None:
    assert [capacity_from_memory(m, (1536, 3072)) for m in (512, 1535, 1536, 3071, 3072)] == [
        1,
        1,
        2,
        2,
        3,
    ]


def test_about_a_third_of_the_fleet_is_online_per_round() -> None:
    fleet = make_fleet(300, seed=1)
    rng = np.random.default_rng(0)
    counts = [online_devices(fleet, r, rng).size for r in range(48)]
    assert np.mean(counts) / 300 == pytest.approx(1 / 3, abs=0.04)
    online = online_devices(fleet, 5, np.random.default_rng(7))
    np.testing.assert_array_equal(online, online_devices(fleet, 5, np.random.default_rng(7)))
    assert (np.diff(online) > 0).all()


def test_online_probability_follows_the_daily_cycle() -> None:
    device = _device(availability=0.4, phase=0.0)
    peak = online_probability(device, 6, period_rounds=24)  # sin = 1
    trough = online_probability(device, 18, period_rounds=24)  # sin = -1
    assert peak == pytest.approx(0.6)
    assert trough == pytest.approx(0.2)
    assert online_probability(device, 6, diurnal_amplitude=0.0) == pytest.approx(0.4)


def test_round_time_is_compute_plus_transfer() -> None:
    device = _device(compute_ms_per_sample=5.0, bandwidth_kbps=1000.0)
    sizes = {"shared": 1000, "expert-0": 2000, "expert-1": 2000}
    t = round_time_s(device, 40, 2, [0, 1], sizes, expert_cost=0.5)
    compute = 40 * 2 * 5.0 * 1.5 / 1000
    transfer = 2 * 8 * 5000 / 1e6
    assert t == pytest.approx(compute + transfer)
    assert compute_cost_factor(1) == 1.0
    assert compute_cost_factor(0) == 1.0
    assert compute_cost_factor(3, 0.5) == 2.0


def test_deadline_capacity_is_bounded_and_monotone_in_the_deadline() -> None:
    for device in make_fleet(40, seed=2):
        caps = [
            deadline_capacity(device, 50, 2, PART_BYTES, deadline)
            for deadline in np.linspace(0.0, 6.0, 25)
        ]
        assert caps == sorted(caps)
        assert caps[0] == 0
        assert caps[-1] <= device.capacity
    fast = _device(compute_ms_per_sample=0.5, bandwidth_kbps=100_000.0)
    assert deadline_capacity(fast, 50, 2, PART_BYTES, 10.0) == 3
    times = [round_time_s(fast, 50, 2, list(range(m)), PART_BYTES) for m in (1, 2, 3)]
    cap = deadline_capacity(fast, 50, 2, PART_BYTES, (times[1] + times[2]) / 2)
    assert cap == 2


def test_default_deadline_leaves_a_meaningful_share_short_of_capacity() -> None:
    """The calibration behind moe.fleet.DEFAULT_DEADLINE_S (fleet regime, 30 devices, 2 epochs)."""
    short, able = [], []
    for seed in range(10):
        data = make_regime("fleet", 30, seed=seed)
        for device, capability in zip(data.devices, make_fleet(30, seed=seed), strict=True):
            cap = deadline_capacity(capability, device.num_samples, 2, PART_BYTES)
            short.append(cap < capability.capacity)
            able.append(cap >= 1)
    assert 0.2 <= np.mean(short) <= 0.4
    assert np.mean(able) >= 0.85
