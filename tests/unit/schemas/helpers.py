"""Test helpers: compare messages with arrays by value, and a few valid sample messages."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

import schemas


def same(a: object, b: object) -> bool:
    """Deep equality where numpy arrays compare by dtype, shape and value (NaN equals NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
        )
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and list(a.keys()) == list(b.keys())
            and all(same(a[k], b[k]) for k in a)
        )
    if isinstance(a, tuple | list):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


# A payload that runs `_pwn` if anyone unpickles it: tests assert `PWNED` stays empty.
PWNED: list[str] = []


def _pwn() -> None:  # called only if someone unpickles
    PWNED.append("pwned")


class Evil:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_pwn, ())


ENV: dict[str, Any] = {
    "message_id": "m-1",
    "device_id": "dev-1",
    "round": 3,
    "timestamp": 1_700_000_000.5,
}


def gate_row(value: float = 0.25) -> dict[str, np.ndarray]:
    """An expert's gate row: a weight row over the hidden width and a bias."""
    weight = np.full(8, value, dtype=np.float32)
    return {"gate.weight": weight, "gate.bias": np.array([-value], dtype=np.float32)}


def part(name: str = "expert-3") -> schemas.PartPayload:
    """A small valid part payload."""
    return schemas.PartPayload(
        part=name,
        base_version=2,
        weight=5.0,
        loss=0.25,
        tensors={
            "w": np.arange(12, dtype=np.float32).reshape(3, 4),
            "b": np.array([1, -2], dtype=np.int64),
        },
    )


def samples() -> list[schemas.Message]:
    """One valid instance of every message type."""
    w = {"w": np.linspace(0, 1, 6, dtype=np.float64).reshape(2, 3)}
    return [
        schemas.Telemetry(
            **ENV,
            device_type=2,
            compute_ms_per_sample=1.5,
            bandwidth_kbps=800.0,
            memory_mb=256.0,
            battery=0.5,
            num_samples=100,
            routing_histogram=(0.5, 0.25, 0.25),
            expert_loss={"expert-0": 0.3},
        ),
        schemas.DeviceStatus(**ENV, online=False, reason="lwt"),
        schemas.Assignment(
            **ENV, experts=(0, 3), deadline=1_700_000_100.0, model_versions={"shared": 4}
        ),
        schemas.ModelUpdate(
            **ENV, num_samples=100, train_seconds=3.5, parts=(part("shared"), part("expert-3"))
        ),
        schemas.PartUpdate(
            **{**ENV, "message_id": "u-1/expert-3"},
            update_id="u-1",
            parts_total=2,
            num_samples=100,
            payload=part(),
        ),
        schemas.PartVersion(**ENV, part="expert-1", version=5, layout_version=1, tensors=w),
        schemas.UpdateAck(**ENV, update_id="u-1", part="shared", status="applied"),
        schemas.ExpertLoad(
            **ENV,
            assigned_clients=(1, 2),
            accepted_updates=(1, 0),
            samples_routed=(10.0, 0.0),
            rounds_since_update=(0, 3),
            cv=0.5,
            max_mean=1.5,
        ),
        schemas.ProfileSnapshot(
            **ENV,
            device_type=1,
            compute_ms_per_sample=2.0,
            bandwidth_kbps=100.0,
            memory_mb=64.0,
            capacity=2,
            battery=1.0,
            online=True,
            num_samples=50,
            completion_rate=0.9,
            rounds_assigned=10,
            rounds_completed=9,
            last_seen=1_700_000_000.0,
            routing_histogram=(1.0, 0.0),
            expert_quality={"expert-1": 0.7},
        ),
        schemas.RoundOpened(
            **ENV,
            deadline=1_700_000_100.0,
            strategy="fitness",
            devices=10,
            expected_parts={"shared": 10, "expert-0": 3},
            model_versions={"shared": 1},
        ),
        schemas.PartClosed(**ENV, part="expert-0", version=2, applied=3, reason="quorum"),
        schemas.PartClosed(
            **ENV, part="expert-1", version=2, applied=3, reason="quorum", gate=gate_row()
        ),
        schemas.RoundClosed(**ENV, reason="deadline", parts_closed=4),
        schemas.RoundClosed(
            **ENV,
            reason="complete",
            parts_closed=3,
            model_versions={"shared": 2, "expert-0": 1, "expert-1": 2},
            gates={"expert-0": gate_row(), "expert-1": gate_row(0.5)},
        ),
        schemas.EvalMetrics(**ENV, accuracy=0.8, loss=0.6, model_versions={"shared": 2}),
        schemas.MessageChunk(
            **{**ENV, "message_id": "up-1/expert-0#1"},
            whole_id="up-1/expert-0",
            whole_type="part-update",
            key="expert-0",
            index=1,
            count=3,
            chunk_bytes=4,
            whole_bytes=10,
            digest=bytes(range(32)),
            data=b"\x01\x02\x03\x04",
        ),
        schemas.DeadLetter(
            **ENV,
            source="fedmoe.updates",
            reason="bad bytes",
            error="MalformedError",
            original=b"\x00\xff",
            original_size=2,
        ),
    ]


def raw(message: schemas.Message) -> dict[str, Any]:
    """The envelope of `message` as plain msgpack values (tensors stay `msgpack.ExtType`)."""
    obj = msgpack.unpackb(schemas.encode(message), ext_hook=msgpack.ExtType)
    assert isinstance(obj, dict)
    return obj


def pack(obj: object) -> bytes:
    """Packs any msgpack value the way a (possibly hostile) producer would."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data
