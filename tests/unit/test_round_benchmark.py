"""`benchmarks.round`'s split of a round's wall time into the devices' own time and the bus's."""

from __future__ import annotations

import pytest

from benchmarks.round import RoundLog, cpu_figures, round_figures
from clients.world import FleetWorld
from moe.scenario import ScenarioConfig, build_scenario, device_id
from schemas.messages import RoundClosed


def _closed(r: int, at: float, reason: str = "parts-closed") -> RoundClosed:
    return RoundClosed(
        message_id=f"c-{r}", device_id="matcher", round=r, timestamp=at, reason=reason,
        parts_closed=5,
    )  # fmt: skip


def test_overhead_is_the_period_minus_the_slowest_applied_device() -> None:
    world = FleetWorld(
        build_scenario(ScenarioConfig(num_devices=4, num_experts=4, static_devices=True)),
        time_scale=2.0,
    )
    ids = {device_id(i): i for i in range(4)}
    log = RoundLog()
    opened = {1: 100.0, 2: 110.0, 3: 130.0, 4: 150.0}
    log.opened.update(opened)
    log.closed[1] = _closed(1, 105.0)
    log.closed[2] = _closed(2, 125.0)
    log.closed[3] = _closed(3, 140.0, reason="deadline")
    for r in (1, 2, 3):
        log.experts[r] = {device_id(0): (0, 1), device_id(1): (2,), device_id(2): (3,)}
        log.applied[r] = {device_id(0), device_id(1)}  # device 2's update never applied
        # Four devices announce each round; device 3's telemetry lands after the opening.
        log.reported[r] = {device_id(i): opened[r] - 1.0 for i in range(3)}
        log.reported[r][device_id(3)] = opened[r] + 0.5
    figures = round_figures(log, world, ids, warmup=0)
    own = {r: max(world.round_wall_s(0, (0, 1), r), world.round_wall_s(1, (2,), r)) for r in (1, 2)}
    assert figures["rounds"] == 2
    assert figures["deadline_rounds"] == 1  # round 3: its length is the deadline's
    assert figures["close_lag_median_s"] == pytest.approx(
        ((5.0 - own[1]) + (15.0 - own[2])) / 2, abs=1e-4
    )
    assert figures["open_gap_median_s"] == pytest.approx(5.0)
    assert figures["overhead_median_s"] == pytest.approx(
        ((10.0 - own[1]) + (20.0 - own[2])) / 2, abs=1e-4
    )
    assert figures["overhead_p90_s"] == pytest.approx(20.0 - own[2], abs=1e-4)
    assert figures["reporting_devices_median"] == 4
    assert figures["reported_before_open_devices_median"] == 3
    assert (figures["assigned_devices_median"], figures["applied_devices_median"]) == (3, 2)
    assert round_figures(log, world, ids, warmup=2)["rounds"] == 0


def test_a_round_in_which_no_update_was_applied_is_counted_apart() -> None:
    world = FleetWorld(build_scenario(ScenarioConfig(num_devices=2, num_experts=2)), time_scale=2.0)
    log = RoundLog()
    log.opened.update({1: 100.0, 2: 130.0, 3: 140.0})
    log.closed[1] = _closed(1, 129.0, reason="max-wait")  # nobody reported: only the wait
    log.closed[2] = _closed(2, 135.0)
    log.experts[2] = {device_id(0): (0,)}
    log.applied[2] = {device_id(0)}
    figures = round_figures(log, world, {device_id(i): i for i in range(2)}, warmup=0)
    assert (figures["rounds"], figures["empty_rounds"]) == (1, 1)
    assert figures["open_gap_median_s"] == pytest.approx(5.0)


def test_the_bus_cpu_is_every_role_but_the_fleet_and_the_benchmarks_own() -> None:
    spent = {"gateway": 6.0, "kafka": 4.0, "fleet": 20.0, "other": 2.0, "mosquitto": 2.0}
    figures = cpu_figures(spent, rounds=4, wall_s=3.0)
    assert figures["bus_cpu_s_per_round"] == 3.0
    assert figures["fleet_cpu_s_per_round"] == 5.0
    assert figures["cpu"]["gateway"] == 1.5
    assert figures["wall_s_per_round"] == 3.0
