"""The simulated round's control traffic: what the bus protocol sends, in encoded bytes."""

from __future__ import annotations

import numpy as np

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


ROW = {"gate.weight": np.zeros(64, np.float32), "gate.bias": np.zeros(1, np.float32)}


def _traffic(
    came_online: frozenset[str], gates: dict[str, dict[str, np.ndarray]] | None = None
) -> RoundTraffic:
    return RoundTraffic(
        round=4,
        online=[(_reading("dev-00001"), LossReport()), (_reading("dev-00002"), LossReport())],
        assigned=[("dev-00001", [0], ["shared", "expert-0"])],
        model_versions={"shared": 3, "expert-0": 3, "expert-1": 2},
        gates={"expert-0": ROW, "expert-1": ROW} if gates is None else gates,
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


def test_every_online_device_hears_every_experts_gate_row_in_its_round_marker() -> None:
    bare = control_bytes(_traffic(frozenset(), gates={}))
    full = control_bytes(_traffic(frozenset()))
    # Two online devices, each marker with two rows of 65 float32.
    assert full - bare >= 2 * 2 * 65 * 4
