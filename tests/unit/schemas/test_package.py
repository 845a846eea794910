"""The package's public surface and its place on the ground floor of the project."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import pytest

import schemas
from fedmoe.errors import FedMoEError
from schemas.limits import MAX_DEAD_LETTER_ORIGINAL, MAX_MESSAGE_BYTES
from tests.unit.schemas.helpers import ENV, samples

ROOT = Path(__file__).resolve().parents[3]
PROJECT_PACKAGES = {"fedmoe", "schemas", "moe", "brokers", "services", "clients", "benchmarks"}


def test_schemas_imports_nothing_of_the_project_but_fedmoe_errors() -> None:
    code = (
        "import sys, schemas\n"
        f"print('\\n'.join(m for m in sys.modules if m.split('.')[0] in {PROJECT_PACKAGES!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    foreign = {m for m in out if m.split(".")[0] != "schemas"}
    assert foreign == {"fedmoe", "fedmoe.errors"}
    # ... and nothing heavy or broker-shaped either.
    code = "import sys, schemas; print(sorted({'torch', 'aiokafka', 'aiomqtt'} & set(sys.modules)))"
    out2 = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out2.stdout.strip() == "[]"


def test_public_api() -> None:
    for name in schemas.__all__:
        assert hasattr(schemas, name), name
    for cls in schemas.MESSAGE_TYPES:
        assert getattr(schemas, cls.__name__) is cls
    for name in ("TopicTable", "Topic", "MqttTopic", "encode", "decode", "decode_as"):
        assert name in schemas.__all__


def test_error_hierarchy() -> None:
    errors = [
        schemas.OversizeError,
        schemas.MalformedError,
        schemas.UnsupportedVersionError,
        schemas.UnknownMessageTypeError,
        schemas.UnexpectedMessageTypeError,
        schemas.InvalidFieldError,
        schemas.TensorError,
    ]
    assert all(issubclass(e, schemas.SchemaError) for e in errors)
    assert issubclass(schemas.SchemaError, FedMoEError)
    assert not schemas.SchemaError.retriable


def test_message_types_are_unique_and_frozen() -> None:
    types = [cls.TYPE for cls in schemas.MESSAGE_TYPES]
    assert len(set(types)) == len(types)
    assert all(types)
    msg = samples()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.round = 4  # type: ignore[misc]


# --- encode refusals ----------------------------------------------------------------------------


def test_encode_refuses_what_is_not_a_registered_message() -> None:
    with pytest.raises(schemas.UnknownMessageTypeError):
        schemas.encode("hello")  # type: ignore[arg-type]

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Rogue(schemas.DeviceStatus):
        pass

    with pytest.raises(schemas.UnknownMessageTypeError, match="Rogue"):
        schemas.encode(Rogue(**ENV, online=True))


def test_encode_refuses_oversize() -> None:
    big = np.zeros(5 * 1024 * 1024 // 4, dtype=np.float32)  # 5 MiB each, 10 MiB together
    msg = schemas.PartVersion(
        **ENV, part="shared", version=1, layout_version=1, tensors={"a": big, "b": big}
    )
    with pytest.raises(schemas.OversizeError, match=str(MAX_MESSAGE_BYTES)):
        schemas.encode(msg)


def test_encode_refuses_values_msgpack_cannot_carry() -> None:
    msg = schemas.DeviceStatus(**ENV, online=True, reason="\ud800")  # a lone surrogate
    with pytest.raises(schemas.InvalidFieldError, match="cannot encode"):
        schemas.encode(msg)
    tensors = {"w": np.zeros(2, dtype=np.float32)}
    msg2 = schemas.PartVersion(**ENV, part="shared", version=1, layout_version=1, tensors=tensors)
    cast(dict[object, np.ndarray], tensors)[1] = np.zeros(1)  # mutated after validation
    with pytest.raises(schemas.InvalidFieldError, match="key 1 is not a str"):
        schemas.encode(msg2)


def test_constructors_refuse_ints_msgpack_cannot_carry() -> None:
    with pytest.raises(schemas.InvalidFieldError, match="parts_closed"):
        schemas.RoundClosed(**ENV, reason="", parts_closed=2**64)
    with pytest.raises(schemas.InvalidFieldError):
        schemas.Telemetry(
            **ENV,
            device_type=0,
            compute_ms_per_sample=1.0,
            bandwidth_kbps=1.0,
            memory_mb=1.0,
            battery=1.0,
            num_samples=2**64,
            routing_histogram=(),
        )


def _row(**tensors: np.ndarray) -> dict[str, np.ndarray]:
    return {"gate.weight": np.zeros(4, np.float32), "gate.bias": np.zeros(1, np.float32)} | tensors


@pytest.mark.parametrize(
    ("gates", "match"),
    [
        ({"expert-9": _row()}, "has no version"),
        ({"expert-0": {}}, "is empty"),
        ({"expert-0": {"gate.weight": np.zeros(4, np.float32)}}, "gate row tensors"),
        ({"expert-0": _row(extra=np.zeros(1, np.float32))}, "gate row tensors"),
        ({"expert-0": _row(**{"gate.bias": np.array([np.nan], np.float32)})}, "non-finite"),
    ],
)
def test_a_round_marker_carries_only_whole_finite_gate_rows_of_versioned_parts(
    gates: dict[str, dict[str, np.ndarray]], match: str
) -> None:
    with pytest.raises(schemas.InvalidFieldError, match=match):
        schemas.RoundClosed(
            **ENV, reason="", parts_closed=1, model_versions={"expert-0": 1}, gates=gates
        )


def test_a_part_closed_carries_no_gate_row_or_a_whole_one() -> None:
    with pytest.raises(schemas.InvalidFieldError, match="gate row tensors"):
        schemas.PartClosed(
            **ENV, part="expert-0", version=1, applied=0, reason="quorum", gate=_row(x=np.ones(1))
        )


def test_dead_letter_original_is_capped() -> None:
    with pytest.raises(schemas.InvalidFieldError, match="capped"):
        schemas.DeadLetter(
            **ENV,
            source="fedmoe.updates",
            reason="too big",
            error="OversizeError",
            original=b"\x00" * (MAX_DEAD_LETTER_ORIGINAL + 1),
            original_size=MAX_DEAD_LETTER_ORIGINAL + 1,
        )


def test_part_ids() -> None:
    assert schemas.valid_part_id("shared")
    assert schemas.valid_part_id("expert-0")
    assert schemas.valid_part_id("expert-1023")
    for bad in ("expert-1024", "expert-01", "expert-", "expert-²", "expert-٣", "expert--1"):
        assert not schemas.valid_part_id(bad), bad
    assert not schemas.valid_part_id("expert-" + "9" * 5000)


def test_constructors_raise_invalid_field_not_type_or_overflow_errors() -> None:
    with pytest.raises(schemas.InvalidFieldError, match="deadline"):
        schemas.RoundOpened(
            **ENV,
            deadline=10**400,  # too large for a float
            strategy="fitness",
            devices=0,
            expected_parts={},
            model_versions={},
        )
    with pytest.raises(schemas.InvalidFieldError, match="reason"):
        schemas.DeviceStatus(**ENV, online=True, reason=5)  # type: ignore[arg-type]
    with pytest.raises(schemas.InvalidFieldError, match="part"):
        schemas.UpdateAck(**ENV, update_id="u", part=3, status="applied")  # type: ignore[arg-type]
    with pytest.raises(schemas.InvalidFieldError, match="status"):
        schemas.UpdateAck(**ENV, update_id="u", part="shared", status=[])  # type: ignore[arg-type]
