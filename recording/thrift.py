"""A minimal Thrift compact-protocol codec: just enough to move a Parquet footer in a file.

Parquet's footer (`FileMetaData`) is Thrift compact; pyarrow can read and write it but not
change byte offsets. The recorder writes each row group with its own `ParquetWriter` (see
`recording.writer`), so the offsets in that writer's footer count from its own start; `shift`
re-bases them onto the recording file. The codec is generic (struct = ordered list of fields),
so every field pyarrow writes survives a round trip untouched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from recording.errors import RecordingError

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT, UUID = range(14)


@dataclass(slots=True)
class Field:
    """One struct field: id, compact type and value (a list of `Field` for a struct)."""

    fid: int
    ctype: int
    value: Any


@dataclass(slots=True)
class Container:
    """A list or set: element type and the elements; or a map: key / value types and pairs."""

    etype: int
    items: list[Any]
    vtype: int = 0


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise RecordingError("thrift: unexpected end of footer")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise RecordingError("thrift: varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RecordingError("thrift: unexpected end of footer")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def value(self, ctype: int) -> Any:
        if ctype in (TRUE, FALSE):
            return ctype == TRUE
        if ctype == BYTE:
            return self.byte()
        if ctype in (I16, I32, I64):
            return self.zigzag()
        if ctype == DOUBLE:
            return self.take(8)
        if ctype == BINARY:
            return self.take(self.varint())
        if ctype == UUID:
            return self.take(16)
        if ctype in (LIST, SET):
            head = self.byte()
            size, etype = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            if etype in (TRUE, FALSE):
                return Container(etype, [self.byte() for _ in range(size)])
            return Container(etype, [self.value(etype) for _ in range(size)])
        if ctype == MAP:
            size = self.varint()
            if size == 0:
                return Container(0, [], 0)
            kinds = self.byte()
            ktype, vtype = kinds >> 4, kinds & 0x0F
            return Container(
                ktype, [(self.value(ktype), self.value(vtype)) for _ in range(size)], vtype
            )
        if ctype == STRUCT:
            return self.struct()
        raise RecordingError(f"thrift: unknown compact type {ctype}")

    def struct(self) -> list[Field]:
        fields: list[Field] = []
        last = 0
        while True:
            head = self.byte()
            if head == STOP:
                return fields
            delta, ctype = head >> 4, head & 0x0F
            fid = last + delta if delta else self.zigzag()
            fields.append(Field(fid, ctype, self.value(ctype)))
            last = fid


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _write_value(out: bytearray, ctype: int, value: Any) -> None:
    if ctype in (TRUE, FALSE):
        return  # in the field header
    if ctype == BYTE:
        out.append(value)
    elif ctype in (I16, I32, I64):
        out += _zigzag(value)
    elif ctype in (DOUBLE, UUID):
        out += value
    elif ctype == BINARY:
        out += _varint(len(value)) + value
    elif ctype in (LIST, SET):
        size = len(value.items)
        out.append((size << 4 | value.etype) if size < 15 else (0xF0 | value.etype))
        if size >= 15:
            out += _varint(size)
        for item in value.items:
            if value.etype in (TRUE, FALSE):
                out.append(item)
            else:
                _write_value(out, value.etype, item)
    elif ctype == MAP:
        out += _varint(len(value.items))
        if value.items:
            out.append(value.etype << 4 | value.vtype)
            for k, v in value.items:
                _write_value(out, value.etype, k)
                _write_value(out, value.vtype, v)
    elif ctype == STRUCT:
        _write_struct(out, value)
    else:
        raise RecordingError(f"thrift: unknown compact type {ctype}")


def _write_struct(out: bytearray, fields: list[Field]) -> None:
    last = 0
    for f in fields:
        ctype = f.ctype
        if ctype in (TRUE, FALSE):
            ctype = TRUE if f.value else FALSE
        delta = f.fid - last
        if 0 < delta <= 15:
            out.append(delta << 4 | ctype)
        else:
            out.append(ctype)
            out += _zigzag(f.fid)
        _write_value(out, f.ctype, f.value)
        last = f.fid
    out.append(STOP)


def decode_struct(data: bytes) -> list[Field]:
    """One struct from `data` (trailing bytes are an error)."""
    reader = _Reader(data)
    fields = reader.struct()
    if reader.pos != len(data):
        raise RecordingError("thrift: trailing bytes after the footer")
    return fields


def encode_struct(fields: list[Field]) -> bytes:
    """The compact encoding of a struct."""
    out = bytearray()
    _write_struct(out, fields)
    return bytes(out)


def _get(fields: list[Field], fid: int) -> Field | None:
    return next((f for f in fields if f.fid == fid), None)


def _add(fields: list[Field], fids: tuple[int, ...], delta: int) -> None:
    for fid in fids:
        f = _get(fields, fid)
        if f is not None and f.value:  # 0 means "not set" in pyarrow's deprecated fields
            f.value += delta


# Parquet's FileMetaData: 4 row_groups; RowGroup: 1 columns, 5 file_offset; ColumnChunk:
# 2 file_offset, 3 meta_data, 4 offset_index_offset, 6 column_index_offset; ColumnMetaData:
# 9 data_page_offset, 10 index_page_offset, 11 dictionary_page_offset, 14 bloom_filter_offset.
def shift_footer(footer: bytes, delta: int) -> bytes:
    """A Parquet footer (FileMetaData, compact) with every byte offset moved by `delta`."""
    meta = decode_struct(footer)
    groups = _get(meta, 4)
    for group in groups.value.items if groups is not None else ():
        _add(group, (5,), delta)
        columns = _get(group, 1)
        for chunk in columns.value.items if columns is not None else ():
            _add(chunk, (2, 4, 6), delta)
            md = _get(chunk, 3)
            if md is not None:
                _add(md.value, (9, 10, 11, 14), delta)
    return encode_struct(meta)


def footer_len(tail: bytes) -> int:
    """The footer length stored before the trailing magic (`<len:4 LE>PAR1`)."""
    (n,) = struct.unpack("<I", tail[-8:-4])
    return int(n)
