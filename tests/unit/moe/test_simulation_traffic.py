"""The simulated round's control traffic: what the bus protocol sends, in encoded bytes."""

from __future__ import annotations

from moe.profiles import TelemetryReading
from moe.simulation.traffic import RoundTraffic, control_bytes
from moe.wire import LossReport
from schemas import DeviceStatus, encode


def _reading(device: str) -> TelemetryReading:
    return TelemetryReading(
        device_id=device,
        device_type=1,
        compute_ms_per_sample=2.0,
        bandwidth_kbps=800.0,
        memory_mb=512.0,
        battery=0.9,
        num_samples=40,
        routing_histogram=(0.5, 0.5),
    )


def _traffic(came_online: frozenset[str]) -> RoundTraffic:
    return RoundTraffic(
        round=4,
        online=[(_reading("dev-00001"), LossReport()), (_reading("dev-00002"), LossReport())],
        assigned=[("dev-00001", [0], ["shared", "expert-0"])],
        model_versions={"shared": 3, "expert-0": 3, "expert-1": 2},
        gate_row_bytes=[300, 300],
        came_online=came_online,
    )


def test_a_device_sends_a_status_only_when_it_comes_online() -> None:
    steady = control_bytes(_traffic(frozenset()))
    back = control_bytes(_traffic(frozenset({"dev-00002"})))
    status = DeviceStatus(
        message_id="st-dev-00002-4",
        device_id="dev-00002",
        round=4,
        timestamp=1_790_000_000.123,
        online=True,
        reason="available",
    )
    assert back - steady == len(encode(status))


def test_a_status_is_counted_only_for_a_device_that_announced_itself() -> None:
    # An id in came_online without a telemetry of the round sent nothing this round.
    assert control_bytes(_traffic(frozenset({"dev-00099"}))) == control_bytes(_traffic(frozenset()))
