from __future__ import annotations

import numpy as np
import pytest

from moe.parts import SHARED
from moe.scenario import ScenarioConfig, build_scenario, derived_seed, device_id, device_index


def test_same_config_same_world() -> None:
    cfg = ScenarioConfig(num_devices=12, seed=3)
    a, b = build_scenario(cfg), build_scenario(cfg)
    assert a.fleet == b.fleet
    np.testing.assert_array_equal(a.data.devices[5].x, b.data.devices[5].x)
    np.testing.assert_array_equal(a.online(7), b.online(7))
    assert a.train_seed(4, 2) == b.train_seed(4, 2)
    np.testing.assert_array_equal(
        a.initial_parts()[SHARED]["encoder.weight"], b.initial_parts()[SHARED]["encoder.weight"]
    )


def test_derived_seeds_are_independent_of_each_other() -> None:
    seeds = {derived_seed(0, p, r, d) for p in (1, 2, 3) for r in range(5) for d in range(5)}
    assert len(seeds) == 75
    assert all(0 <= s < 2**63 for s in seeds)


def test_label_skew_devices_are_identical() -> None:
    sc = build_scenario(ScenarioConfig(regime="label-skew", num_devices=6))
    caps = {(c.compute_ms_per_sample, c.bandwidth_kbps, c.capacity) for c in sc.fleet}
    assert len(caps) == 1
    assert {d.device_type for d in sc.data.devices} == {0}


def test_telemetry_reports_capability_and_histogram() -> None:
    sc = build_scenario(ScenarioConfig(num_devices=8, num_experts=4))
    t = sc.telemetry(2, sc.initial_parts(), 1)
    assert t.device_id == device_id(2)
    assert t.num_samples == sc.data.devices[2].num_samples
    assert len(t.routing_histogram) == 4
    assert sum(t.routing_histogram) == pytest.approx(1.0)
    assert sc.round_time_s(2, [0, 1], 1) > sc.round_time_s(2, [0], 1) > 0


def test_device_ids_round_trip() -> None:
    assert device_index(device_id(42)) == 42
    assert device_index("gateway") is None
    assert device_index("dev-x1") is None
