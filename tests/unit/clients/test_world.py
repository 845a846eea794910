"""What the scenario decides for simulated devices: availability as the simulation has it,
round times scaled to wall time, seeded drops, and the reports a device sends."""

from __future__ import annotations

import pytest

from clients.world import FleetWorld, status
from moe.parts import expert_part_id
from moe.wire import LossReport
from tests.unit.clients.helpers import scenario


def test_availability_is_the_scenarios_online_set() -> None:
    sc = scenario()
    world = FleetWorld(sc, time_scale=0.5)
    for round_ in range(1, 8):
        online = {int(i) for i in sc.online(round_)}
        assert {i for i in range(6) if world.available(i, round_)} == online
    # Some devices are online and some are not in this scenario, so the test means something.
    assert any(world.available(i, 1) for i in range(6))
    assert not all(world.available(i, 1) for i in range(6))


def test_round_time_is_the_simulated_time_times_the_scale() -> None:
    sc = scenario()
    world = FleetWorld(sc, time_scale=0.25)
    assert world.round_wall_s(2, [0, 3], 1) == pytest.approx(sc.round_time_s(2, [0, 3], 1) * 0.25)
    assert world.deadline_wall_s == pytest.approx(sc.config.deadline_s * 0.25)
    with pytest.raises(ValueError, match="time_scale"):
        FleetWorld(sc, time_scale=0.0)


def test_drops_are_seeded_per_device_and_round_and_fall_within_the_round() -> None:
    sc = scenario()
    world = FleetWorld(sc, time_scale=2.0)
    draws = [world.drop_delay(d, r, 0.3) for d in range(6) for r in range(1, 101)]
    again = [
        FleetWorld(sc, time_scale=2.0).drop_delay(d, r, 0.3)
        for d in range(6)
        for r in range(1, 101)
    ]
    assert draws == again
    delays = [d for d in draws if d is not None]
    assert 0.2 < len(delays) / len(draws) < 0.4  # 600 draws at p = 0.3
    assert all(0.0 <= d <= world.deadline_wall_s for d in delays)
    assert world.drop_delay(0, 1, 0.0) is None
    assert all(world.drop_delay(d, 1, 1.0) is not None for d in range(6))


def test_telemetry_reports_capabilities_histogram_and_last_losses() -> None:
    sc = scenario()
    world = FleetWorld(sc, time_scale=1.0)
    parts = sc.initial_parts()
    losses = {expert_part_id(1): 0.75}
    report = LossReport(expert_loss=losses, data_loss=1.25, expert_data_loss={"expert-1": 0.5})
    message = world.telemetry(2, parts, round_=4, gate_version=3, losses=report, timestamp=12.0)
    reading = sc.telemetry(2, parts, 4)
    cap = sc.fleet[2]
    measured = sc.conditions(2, 3)  # what the device measured of itself in the round before
    assert (message.device_id, message.round, message.gate_version) == ("dev-00002", 4, 3)
    assert message.message_id == "tm-dev-00002-r4"  # the same report if sent twice
    assert message.routing_histogram == reading.routing_histogram
    assert sum(message.routing_histogram) == pytest.approx(1.0)
    assert message.compute_ms_per_sample == measured.compute_ms_per_sample
    assert message.compute_ms_per_sample != cap.compute_ms_per_sample  # not a clock
    assert message.bandwidth_kbps == measured.bandwidth_kbps
    assert message.memory_mb == cap.memory_mb
    assert message.battery == sc.conditions(2, 4).battery
    assert message.num_samples == sc.data.devices[2].num_samples
    assert message.device_type == sc.data.devices[2].device_type
    assert dict(message.expert_loss) == losses
    assert (message.data_loss, dict(message.expert_data_loss)) == (1.25, {"expert-1": 0.5})


def test_status_message() -> None:
    message = status(7, round_=3, online=False, reason="lost", message_id="m", timestamp=1.0)
    assert (message.device_id, message.round, message.online, message.reason) == (
        "dev-00007",
        3,
        False,
        "lost",
    )


def test_delivery_lag_is_bounded_by_one_deadline() -> None:
    world = FleetWorld(scenario(), time_scale=2.0)  # deadline 1.5 s simulated = 3 s wall
    assert world.delivery_lag_s(100.0, 100.4) == pytest.approx(0.4)
    assert world.delivery_lag_s(100.0, 99.0) == 0.0  # a clock ahead of ours: no head start
    assert world.delivery_lag_s(100.0, 200.0) == pytest.approx(3.0)  # stale: one deadline
