"""The tensor ExtType: numpy arrays on the wire, without pickle.

Wire form: msgpack ExtType with code `TENSOR_EXT_CODE` whose data is

    offset  size      field
    0       1         format version (1)
    1       1         dtype code (see `DTYPE_CODES`)
    2       1         rank r (0..MAX_TENSOR_RANK)
    3       1         reserved, 0
    4       4·r       dims, uint32 little-endian each
    ...     0..7      zero padding, so the data starts at a multiple of 8
    h       n·size    the elements, C order, little-endian

`n = prod(dims)` must be at most `MAX_TENSOR_ELEMENTS` and the data exactly `n·itemsize` bytes.
Decoding uses `numpy.frombuffer`: zero copy, so the returned array is read-only
(copy it before writing to it).
"""

from __future__ import annotations

import struct
from typing import Final

import msgpack
import numpy as np

from schemas.errors import TensorError
from schemas.limits import MAX_TENSOR_ELEMENTS, MAX_TENSOR_RANK

TENSOR_EXT_CODE: Final = 1
TENSOR_FORMAT: Final = 1

# dtype code on the wire -> little-endian numpy dtype. Codes are part of the wire contract:
# never renumber, only append.
DTYPE_CODES: Final[dict[int, np.dtype[np.generic]]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<f2"),
    4: np.dtype("<i8"),
    5: np.dtype("<i4"),
    6: np.dtype("|u1"),
    7: np.dtype("|b1"),
}
_CODE_BY_NAME: Final[dict[str, int]] = {dt.name: code for code, dt in DTYPE_CODES.items()}
ALLOWED_DTYPES: Final = frozenset(_CODE_BY_NAME)
"""Names of the dtypes a tensor may have: float32, float64, float16, int64, int32, uint8, bool."""

_FIXED = struct.Struct("<BBBB")


def _header_len(rank: int) -> int:
    raw = _FIXED.size + 4 * rank
    return (raw + 7) // 8 * 8


def pack_tensor(array: np.ndarray) -> msgpack.ExtType:
    """Encodes an array as the tensor ExtType.

    Args:
        array: a numpy array of an allowed dtype (any byte order, any memory layout).

    Returns:
        The `msgpack.ExtType` to put in a message.

    Raises:
        TensorError: not an array, dtype not allowed, rank or element count over the limits.
    """
    if not isinstance(array, np.ndarray) or isinstance(array, np.ma.MaskedArray):
        raise TensorError(f"tensor must be a numpy.ndarray, got {type(array).__name__}")
    dtype = array.dtype
    code = _CODE_BY_NAME.get(dtype.name) if dtype.fields is None else None
    if code is None:
        raise TensorError(
            f"tensor dtype {dtype!s} is not allowed (allowed: {', '.join(sorted(ALLOWED_DTYPES))})"
        )
    shape = array.shape
    if len(shape) > MAX_TENSOR_RANK:
        raise TensorError(f"tensor rank {len(shape)} exceeds {MAX_TENSOR_RANK}")
    if any(d > MAX_TENSOR_ELEMENTS for d in shape) or array.size > MAX_TENSOR_ELEMENTS:
        raise TensorError(f"tensor shape {shape} exceeds {MAX_TENSOR_ELEMENTS} elements")
    wire_dtype = DTYPE_CODES[code]
    data = np.asarray(array, dtype=wire_dtype).tobytes(order="C")
    header = bytearray(_header_len(len(shape)))
    _FIXED.pack_into(header, 0, TENSOR_FORMAT, code, len(shape), 0)
    struct.pack_into(f"<{len(shape)}I", header, _FIXED.size, *shape)
    return msgpack.ExtType(TENSOR_EXT_CODE, bytes(header) + data)


def unpack_tensor(data: bytes) -> np.ndarray:
    """Decodes the data of a tensor ExtType (zero copy).

    Args:
        data: the ExtType's data.

    Returns:
        A read-only array viewing `data`.

    Raises:
        TensorError: bad header, dtype code, rank, shape, or a length that does not match.
    """
    if len(data) < _FIXED.size:
        raise TensorError(f"tensor header truncated ({len(data)} bytes)")
    fmt, code, rank, reserved = _FIXED.unpack_from(data, 0)
    if fmt != TENSOR_FORMAT:
        raise TensorError(f"unknown tensor format {fmt}")
    dtype = DTYPE_CODES.get(code)
    if dtype is None:
        raise TensorError(f"tensor dtype code {code} is not allowed")
    if reserved != 0:
        raise TensorError("tensor header reserved byte must be 0")
    if rank > MAX_TENSOR_RANK:
        raise TensorError(f"tensor rank {rank} exceeds {MAX_TENSOR_RANK}")
    offset = _header_len(rank)
    if len(data) < offset:
        raise TensorError(f"tensor header truncated ({len(data)} < {offset} bytes)")
    shape = struct.unpack_from(f"<{rank}I", data, _FIXED.size)
    if any(data[_FIXED.size + 4 * rank : offset]):
        raise TensorError("tensor header padding must be zero")
    count = 1
    for dim in shape:
        if dim > MAX_TENSOR_ELEMENTS:
            raise TensorError(f"tensor dim {dim} exceeds {MAX_TENSOR_ELEMENTS}")
        count *= dim
    if count > MAX_TENSOR_ELEMENTS:
        raise TensorError(f"tensor shape {shape} exceeds {MAX_TENSOR_ELEMENTS} elements")
    expected = count * dtype.itemsize
    if len(data) - offset != expected:
        raise TensorError(
            f"tensor data is {len(data) - offset} bytes, shape {shape} of {dtype.name} "
            f"needs {expected}"
        )
    if dtype.kind == "b" and count:
        raw = np.frombuffer(data, dtype=np.uint8, count=count, offset=offset)
        if int(raw.max()) > 1:
            raise TensorError("bool tensor holds bytes other than 0 and 1")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape)
