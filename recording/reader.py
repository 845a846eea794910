"""Reading recordings: any Parquet reader for a closed file; `open_recording` for a cut one too.

A closed recording is a plain Parquet file (`pyarrow.parquet.read_table`, DuckDB, pandas). A file
cut mid-write (a crash, a copy in progress, `truncate`) has lost its last footer; each complete
row group is followed by its own footer (`recording.writer`), so `open_recording` finds the last
intact one and walks back from group to group: group g starts right after footer g − 1.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recording.errors import RecordingError, TruncatedRecording
from recording.format import META_INFO, SCHEMA, Record, from_rows

MAGIC = b"PAR1"


@dataclass(frozen=True, slots=True)
class Recording:
    """An opened recording: its Parquet file and what it says about itself."""

    path: Path
    file: pq.ParquetFile
    recovered: bool  # True when read from a cut file (its last footer was lost)

    @property
    def num_records(self) -> int:
        """Records in the (complete) row groups."""
        return int(self.file.metadata.num_rows)

    @property
    def info(self) -> dict[str, Any]:
        """The recorder's `info` (scenario, namespace, root), {} when absent."""
        meta = self.file.schema_arrow.metadata or {}
        try:
            data = json.loads(meta.get(META_INFO, b"{}"))
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """Every record as one table (all columns unless `columns`)."""
        return self.file.read(columns=columns)

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The records row group by row group (bounded memory for long recordings)."""
        for g in range(self.file.num_row_groups):
            yield from self.file.read_row_group(g, columns=columns).to_batches()

    def records(self) -> Iterator[Record]:
        """Every record, in file order (arrival order)."""
        for batch in self.batches():
            yield from from_rows(batch.to_pydict())


def _footer_before(data: bytes, end: int) -> tuple[pq.FileMetaData, int] | None:
    """The footer that ends exactly at `end` (`...footer len PAR1`), and where it starts."""
    if end < 12 or data[end - 4 : end] != MAGIC:
        return None
    (size,) = struct.unpack("<I", data[end - 8 : end - 4])
    start = end - 8 - size
    if size == 0 or start < 4:
        return None
    try:
        meta = pq.read_metadata(io.BytesIO(MAGIC + data[start:end]))
    except (pa.ArrowException, OSError, ValueError):
        return None
    return meta, start


def _group_start(meta: pq.FileMetaData) -> int:
    group = meta.row_group(0)
    starts = []
    for c in range(group.num_columns):
        col = group.column(c)
        starts.append(col.dictionary_page_offset or col.data_page_offset)
    return int(min(starts))


def recover_metadata(data: bytes) -> pq.FileMetaData:
    """The metadata of every complete row group of a cut recording (see the module doc)."""
    end = len(data)
    found: tuple[pq.FileMetaData, int] | None = None
    while found is None:
        end = data.rfind(MAGIC, 0, end)
        if end <= 0:
            raise TruncatedRecording("no complete row group before the cut")
        found = _footer_before(data, end + 4)
    chain: list[pq.FileMetaData] = []
    meta, _ = found
    while True:
        if meta.num_row_groups != 1:
            # The final footer (all groups) survived: only what follows it was cut.
            chain.append(meta)
            break
        chain.append(meta)
        start = _group_start(meta)
        if start <= 4:
            break
        previous = _footer_before(data, start)
        if previous is None:
            raise RecordingError(f"no footer ends where row group starts (byte {start})")
        meta, _ = previous
    chain.reverse()
    combined = chain[0]
    for meta in chain[1:]:
        combined.append_row_groups(meta)
    return combined


def open_recording(path: Path | str) -> Recording:
    """Open a recording, recovering the complete row groups of a cut file.

    Raises:
        RecordingError: not a recording (missing, not Parquet, another schema).
        TruncatedRecording: a cut file without one complete row group.
    """
    path = Path(path)
    try:
        file = pq.ParquetFile(path)
        recovered = False
    except FileNotFoundError as exc:
        raise RecordingError(f"{path}: no such recording") from exc
    except (pa.ArrowException, OSError):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RecordingError(f"{path}: cannot read: {exc}") from exc
        if data[:4] != MAGIC:
            raise RecordingError(f"{path}: not a Parquet file") from None
        meta = recover_metadata(data)
        file = pq.ParquetFile(io.BytesIO(data), metadata=meta)
        recovered = True
    names = file.schema_arrow.names
    missing = [n for n in SCHEMA.names if n not in names]
    if missing:
        raise RecordingError(f"{path}: not a fedmoe recording (missing columns {missing})")
    return Recording(path, file, recovered)
