"""The envelope codec: round trips, the envelope's shape, versions and decode_as."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

import schemas
from schemas.codec import SCHEMA_VERSION
from tests.unit.schemas.helpers import ENV, same, samples


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in samples()} == set(schemas.MESSAGE_TYPES)


@pytest.mark.parametrize("message", samples(), ids=lambda m: type(m).__name__)
def test_round_trip(message: schemas.Message) -> None:
    data = schemas.encode(message)
    assert isinstance(data, bytes)
    back = schemas.decode(data)
    assert same(back, message)
    assert same(schemas.decode_as(data, type(message)), message)
    assert schemas.encode(back) == data


def test_envelope_shape() -> None:
    msg = schemas.DeviceStatus(**ENV, online=True)
    raw = msgpack.unpackb(schemas.encode(msg))
    assert raw == {
        "v": list(SCHEMA_VERSION),
        "type": "status",
        "id": "m-1",
        "device": "dev-1",
        "round": 3,
        "ts": 1_700_000_000.5,
        "body": {"online": True, "reason": ""},
    }


def test_decoded_tensors_are_zero_copy_read_only_and_aligned() -> None:
    back = schemas.decode(schemas.encode(samples()[3]))
    assert isinstance(back, schemas.ModelUpdate)
    arr = back.parts[0].tensors["w"]
    assert not arr.flags.writeable
    assert not arr.flags.owndata
    assert arr.flags.aligned
    assert arr.flags.c_contiguous


def test_decode_as_wrong_type() -> None:
    data = schemas.encode(samples()[1])
    with pytest.raises(schemas.UnexpectedMessageTypeError, match="expected 'telemetry'"):
        schemas.decode_as(data, schemas.Telemetry)


def test_non_contiguous_and_big_endian_tensors_are_normalised() -> None:
    base = np.arange(24, dtype=">f8").reshape(4, 6)
    view = base[::2, ::3].T
    assert not view.flags.c_contiguous
    msg = schemas.PartVersion(
        **ENV, part="shared", version=1, layout_version=1, tensors={"x": view}
    )
    back = schemas.decode(schemas.encode(msg))
    assert isinstance(back, schemas.PartVersion)
    out = back.tensors["x"]
    assert out.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(out, view)
