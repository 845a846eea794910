"""`RecordingWriter`: records to a Parquet file in row groups, written as they fill.

Each row group is written by its own `pyarrow.parquet.ParquetWriter` into the file, followed by
that writer's footer with its offsets moved onto the file (`recording.thrift.shift_footer`):

    PAR1 | group 0 | footer(0) len PAR1 | group 1 | footer(1) len PAR1 | ... | footer(all) len PAR1

A reader of the closed file uses the last footer (every group; the footers in between are bytes
no offset points at, so pyarrow, DuckDB and pandas read it as any Parquet file). A file cut
anywhere, by a crash or by hand, still holds the per-group footers of every complete group before
the cut: `recording.reader` walks them back and reads those groups. Memory is bounded by
`max_group_bytes` / `max_group_records`: a group is written when either is reached (or on
`flush`), so a crash loses at most the group being filled.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import pyarrow as pa
import pyarrow.parquet as pq

from recording.errors import RecordingError
from recording.format import DICTIONARY_COLUMNS, SCHEMA, Record, info_metadata, to_table
from recording.thrift import shift_footer

MAGIC = b"PAR1"


class _Segment(io.RawIOBase):
    """What one group's ParquetWriter writes, into the recording: its leading magic dropped
    (the file has one), everything else appended; the footer is kept apart to be re-based."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.chunks.append(data)
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written


def write_group(out: BinaryIO, table: pa.Table, compression: str) -> pq.FileMetaData:
    """Append `table` as one row group plus its own (re-based) footer at `out`'s position;
    returns that group's metadata with file offsets."""
    start = out.tell()
    segment = _Segment()
    writer = pq.ParquetWriter(
        segment,
        table.schema,
        compression=compression,
        use_dictionary=list(DICTIONARY_COLUMNS),
        write_statistics=["t_ns", "round"],
    )
    writer.write_table(table, row_group_size=max(table.num_rows, 1))
    writer.close()
    data = b"".join(segment.chunks)
    (footer_size,) = struct.unpack("<I", data[-8:-4])
    body_end = len(data) - 8 - footer_size
    if data[:4] != MAGIC or data[-4:] != MAGIC:
        raise RecordingError("parquet writer produced an unexpected layout")
    body = data[4:body_end]
    footer = shift_footer(data[body_end : len(data) - 8], start - 4)
    out.write(body)
    out.write(footer + struct.pack("<I", len(footer)) + MAGIC)
    return pq.read_metadata(io.BytesIO(MAGIC + footer + struct.pack("<I", len(footer)) + MAGIC))


class RecordingWriter:
    """Appends records to a new recording file (a context manager; `close` writes the footer).

    Args:
        path: the file (created or replaced).
        info: what the recording is (scenario, namespace, root): JSON in the file metadata.
        max_group_records / max_group_bytes: when a row group is written.
        compression: Parquet codec of every column.
        fsync: fsync after each group (durable against a power cut, slower).
    """

    def __init__(
        self,
        path: Path,
        *,
        info: Mapping[str, Any] | None = None,
        max_group_records: int = 10_000,
        max_group_bytes: int = 16 * 1024 * 1024,
        compression: str = "snappy",
        fsync: bool = False,
    ) -> None:
        if max_group_records < 1 or max_group_bytes < 1:
            raise RecordingError("row groups need room for at least one record")
        self.path = Path(path)
        self.schema = SCHEMA.with_metadata(info_metadata(info or {}))
        self.max_group_records = max_group_records
        self.max_group_bytes = max_group_bytes
        self.compression = compression
        self.fsync = fsync
        self.records = 0  # written to the file so far (complete groups)
        self.groups = 0
        self.buffered_bytes = 0
        self._buffer: list[Record] = []
        self._metas: list[pq.FileMetaData] = []
        self._file: BinaryIO | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        self._file.write(MAGIC)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def bytes_written(self) -> int:
        """Bytes in the file so far."""
        return self._file.tell() if self._file is not None else 0

    def append(self, record: Record) -> None:
        """Buffer one record; a full buffer becomes a row group now."""
        self._buffer.append(record)
        self.buffered_bytes += record.size
        if (
            len(self._buffer) >= self.max_group_records
            or self.buffered_bytes >= self.max_group_bytes
        ):
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as one row group (nothing when empty)."""
        if not self._buffer:
            return
        if self._file is None:
            raise RecordingError(f"{self.path}: writer is not open")
        table = to_table(self._buffer).replace_schema_metadata(self.schema.metadata)
        try:
            self._metas.append(write_group(self._file, table, self.compression))
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except (OSError, pa.ArrowException) as exc:
            raise RecordingError(f"{self.path}: cannot write a row group: {exc}") from exc
        self.records += len(self._buffer)
        self.groups += 1
        self._buffer = []
        self.buffered_bytes = 0

    def close(self) -> None:
        """Flush and write the footer of every group (idempotent)."""
        if self._file is None:
            return
        try:
            self.flush()
            if self._metas:
                combined = self._metas[0]
                for meta in self._metas[1:]:
                    combined.append_row_groups(meta)
                buf = io.BytesIO()
                combined.write_metadata_file(buf)
                self._file.write(buf.getvalue()[len(MAGIC) :])
            else:  # no record: still a valid, empty Parquet file
                buf = io.BytesIO()
                pq.write_table(self.schema.empty_table(), buf)
                self._file.seek(0)
                self._file.truncate()
                self._file.write(buf.getvalue())
        finally:
            file, self._file = self._file, None
            file.close()
