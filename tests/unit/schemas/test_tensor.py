"""The tensor ExtType: layout, allowed dtypes, and what encoding refuses."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import schemas
from schemas.limits import MAX_MESSAGE_BYTES, MAX_TENSOR_ELEMENTS
from schemas.tensor import DTYPE_CODES, TENSOR_EXT_CODE, unpack_tensor
from tests.unit.schemas.helpers import ENV, same


def test_dtype_codes_are_the_documented_contract() -> None:
    assert {code: dt.str for code, dt in DTYPE_CODES.items()} == {
        1: "<f4",
        2: "<f8",
        3: "<f2",
        4: "<i8",
        5: "<i4",
        6: "|u1",
        7: "|b1",
    }
    assert {
        "float32",
        "float64",
        "float16",
        "int64",
        "int32",
        "uint8",
        "bool",
    } == schemas.ALLOWED_DTYPES
    assert TENSOR_EXT_CODE == 1


def test_wire_layout() -> None:
    ext = schemas.pack_tensor(np.arange(6, dtype="<f4").reshape(2, 3))
    assert ext.code == 1
    header = struct.pack("<BBBB", 1, 1, 2, 0) + struct.pack("<2I", 2, 3) + b"\x00" * 4
    assert ext.data == header + np.arange(6, dtype="<f4").tobytes()


@pytest.mark.parametrize("rank", range(5))
def test_data_is_8_byte_aligned_in_the_ext(rank: int) -> None:
    arr = np.ones((2,) * rank, dtype=np.float64)
    data = schemas.pack_tensor(arr).data
    assert (len(data) - arr.nbytes) % 8 == 0
    back = unpack_tensor(data)
    assert back.flags.aligned
    assert same(back, arr)


@pytest.mark.parametrize("dtype", sorted(schemas.ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (2, 3), (1, 2, 3, 4)])
def test_round_trip_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    arr = (np.arange(int(np.prod(shape))) % 3).astype(dtype).reshape(shape)
    back = unpack_tensor(schemas.pack_tensor(arr).data)
    assert same(back, arr)
    assert not back.flags.writeable


def test_byte_order_and_layout_are_normalised() -> None:
    arr = np.asfortranarray(np.arange(12, dtype=">i4").reshape(3, 4))
    back = unpack_tensor(schemas.pack_tensor(arr).data)
    assert back.dtype == np.dtype("<i4")
    assert back.flags.c_contiguous
    np.testing.assert_array_equal(back, arr)
    strided = np.arange(20, dtype=np.float16)[::3]
    np.testing.assert_array_equal(unpack_tensor(schemas.pack_tensor(strided).data), strided)


@pytest.mark.parametrize(
    "array",
    [
        np.array([object(), 1], dtype=object),
        np.array([1 + 2j]),
        np.array([1.0], dtype=np.longdouble),
        np.array(["a"]),
        np.array([b"a"]),
        np.array([1], dtype="datetime64[s]"),
        np.array([1], dtype=np.uint16),
        np.array([1], dtype=np.int8),
        np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
        np.zeros(2, dtype=[("a", "<f4")]),
    ],
    ids=lambda a: str(a.dtype),
)
def test_disallowed_dtypes(array: np.ndarray) -> None:
    with pytest.raises(schemas.TensorError, match="not allowed"):
        schemas.pack_tensor(array)


def test_other_refusals() -> None:
    with pytest.raises(schemas.TensorError, match=r"numpy\.ndarray"):
        schemas.pack_tensor([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(schemas.TensorError, match=r"numpy\.ndarray"):
        schemas.pack_tensor(np.ma.masked_array([1.0], mask=[True]))
    with pytest.raises(schemas.TensorError, match="rank 5"):
        schemas.pack_tensor(np.zeros((1,) * 5, dtype=np.float32))
    too_many = np.broadcast_to(np.float32(0), (MAX_TENSOR_ELEMENTS + 1,))
    with pytest.raises(schemas.TensorError, match="elements"):
        schemas.pack_tensor(too_many)
    with pytest.raises(schemas.TensorError, match="elements"):
        schemas.pack_tensor(np.zeros((0, 2**33), dtype=np.float32))


def test_a_tensor_over_one_record_packs_and_its_message_needs_a_larger_cap() -> None:
    # Larger than one record: it travels in a whole that is sent as chunks (schemas.chunks).
    huge = np.zeros(MAX_MESSAGE_BYTES // 8 + 1, dtype=np.float64)
    msg = schemas.PartVersion(
        **ENV, part="shared", version=1, layout_version=1, tensors={"w": huge}
    )
    with pytest.raises(schemas.OversizeError, match="over"):
        schemas.encode(msg)
    data = schemas.encode(msg, max_bytes=2 * MAX_MESSAGE_BYTES)
    with pytest.raises(schemas.OversizeError, match="exceeds"):
        schemas.decode(data)
    back = schemas.decode(data, max_bytes=len(data))
    assert isinstance(back, schemas.PartVersion)
    assert np.array_equal(back.tensors["w"], huge)


def test_encode_refuses_bad_tensors_naming_the_field() -> None:
    arr = np.array([1 + 1j])
    msg = schemas.PartVersion(**ENV, part="shared", version=1, layout_version=1, tensors={"w": arr})
    with pytest.raises(schemas.TensorError, match=r"PartVersion.tensors\['w'\]: .*complex128"):
        schemas.encode(msg)
