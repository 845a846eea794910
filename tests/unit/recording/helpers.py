"""Small recordings built from real messages (through the codec), for the recording tests."""

from __future__ import annotations

from recording.format import KAFKA, MQTT, Record
from schemas import encode
from schemas.messages import Assignment, DeviceStatus, Telemetry

ROOT = "fleet"
NS = "fedmoe"


def telemetry(device: str, round_: int, *, ms: float = 4.0, kbps: float = 4000.0) -> Telemetry:
    return Telemetry(
        message_id=f"t-{device}-{round_}",
        device_id=device,
        round=round_,
        timestamp=1000.0 + round_,
        device_type=0,
        compute_ms_per_sample=ms,
        bandwidth_kbps=kbps,
        memory_mb=4096.0,
        battery=0.9,
        num_samples=40,
        routing_histogram=(10.0, 10.0, 10.0, 10.0),
    )


def status(device: str, round_: int, online: bool) -> DeviceStatus:
    return DeviceStatus(
        message_id=f"s-{device}-{round_}",
        device_id=device,
        round=round_,
        timestamp=1000.0 + round_,
        online=online,
    )


def assignment(device: str, round_: int, experts: tuple[int, ...]) -> Assignment:
    return Assignment(
        message_id=f"a-{device}-{round_}",
        device_id=device,
        round=round_,
        timestamp=1000.0 + round_,
        experts=experts,
        deadline=2000.0,
        model_versions={"shared": 0},
    )


def mqtt(t_ns: int, kind: str, message: object) -> Record:
    device = message.device_id
    return Record.observed(
        t_ns, MQTT, f"{ROOT}/{device}/{kind}", encode(message), qos=1, retain=False
    )  # type: ignore[arg-type]


def kafka(t_ns: int, topic: str, payload: bytes, offset: int) -> Record:
    return Record.observed(
        t_ns, KAFKA, f"{NS}.{topic}", payload, key=b"k", partition=0, offset=offset
    )


def small_fleet(rounds: int = 3, devices: int = 4) -> list[Record]:
    """`devices` devices announcing `rounds` rounds (1 s apart), one assignment each."""
    out: list[Record] = []
    t = 1_000_000_000
    for r in range(1, rounds + 1):
        for d in range(devices):
            dev = f"dev-{d:05d}"
            out.append(mqtt(t, "status", status(dev, r, True)))
            t += 1_000_000
            out.append(mqtt(t, "telemetry", telemetry(dev, r, ms=2.0 + d, kbps=1000.0 * (d + 1))))
            t += 1_000_000
        for d in range(devices):
            dev = f"dev-{d:05d}"
            out.append(mqtt(t, "assignment", assignment(dev, r, (d % 4,))))
            t += 1_000_000
        t += 1_000_000_000
    return out
