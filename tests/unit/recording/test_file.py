"""The recording file: round trip through plain pyarrow / DuckDB, cut files, envelope columns."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from recording.errors import RecordingError, TruncatedRecording
from recording.format import Record
from recording.reader import open_recording
from recording.writer import RecordingWriter
from tests.unit.recording.helpers import kafka, small_fleet


def _write(path: Path, records: list[Record], group: int) -> None:
    with RecordingWriter(path, info={"namespace": "fedmoe"}, max_group_records=group) as w:
        for r in records:
            w.append(r)


def _records() -> list[Record]:
    records = small_fleet(rounds=4, devices=5)
    records.append(kafka(records[-1].t_ns + 1, "rounds", b"\x00not msgpack\xff", 7))
    return records


def test_round_trip_with_plain_pyarrow_every_payload_byte_identical(tmp_path: Path) -> None:
    records = _records()
    path = tmp_path / "run.parquet"
    _write(path, records, group=7)
    table = pq.read_table(path)  # a plain Parquet reader, nothing of this project
    assert table.num_rows == len(records)
    assert pq.ParquetFile(path).metadata.num_row_groups == -(-len(records) // 7)
    rows = table.to_pylist()
    for want, got in zip(records, rows, strict=True):
        assert got["payload"] == want.payload
        assert (got["t_ns"], got["topic"], got["source"]) == (want.t_ns, want.topic, want.source)
    kafka_row = rows[-1]
    assert (kafka_row["partition"], kafka_row["offset"], kafka_row["key"]) == (0, 7, b"k")
    assert kafka_row["type"] is None  # does not decode: the columns say so, the bytes stay
    telemetry = next(r for r in rows if r["topic"].endswith("/telemetry"))
    assert (telemetry["type"], telemetry["device"], telemetry["round"]) == (
        "telemetry",
        "dev-00000",
        1,
    )
    assert (telemetry["qos"], telemetry["retain"], telemetry["partition"]) == (1, False, None)


def test_duckdb_queries_a_recording(tmp_path: Path) -> None:
    records = _records()
    path = tmp_path / "run.parquet"
    _write(path, records, group=10)
    rows = duckdb.sql(
        f"select type, count(*), sum(octet_length(payload)) from '{path}' "
        "where type is not null group by type order by type"
    ).fetchall()
    want: dict[str, list[int]] = {}
    for r in records:
        if r.type is not None:
            want.setdefault(r.type, [0, 0])
            want[r.type][0] += 1
            want[r.type][1] += len(r.payload)
    assert rows == [(t, n, b) for t, (n, b) in sorted(want.items())]


@pytest.mark.parametrize("keep", [0.999, 0.7, 0.5, 0.2])
def test_a_cut_file_reads_up_to_its_last_complete_row_group(tmp_path: Path, keep: float) -> None:
    records = _records()
    path = tmp_path / "run.parquet"
    _write(path, records, group=6)
    data = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017  (pyarrow's own error type varies)
        pq.read_table(_cut(tmp_path, data, keep))
    recording = open_recording(_cut(tmp_path, data, keep))
    assert recording.recovered
    got = list(recording.records())
    if keep > 0.99:  # cut inside the final footer: every group is complete
        assert len(got) == len(records)
    else:
        assert 0 < len(got) < len(records)
        assert len(got) % 6 == 0  # whole row groups only
    assert [r.payload for r in got] == [r.payload for r in records[: len(got)]]
    assert recording.info == {"namespace": "fedmoe"}


def _cut(tmp_path: Path, data: bytes, keep: float) -> Path:
    path = tmp_path / f"cut-{keep}.parquet"
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_a_file_cut_inside_its_first_group_has_nothing_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "run.parquet"
    _write(path, _records(), group=1000)
    data = path.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(TruncatedRecording):
        open_recording(cut)


def test_an_empty_recording_is_a_valid_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    with RecordingWriter(path):
        pass
    assert pq.read_table(path).num_rows == 0
    assert open_recording(path).num_records == 0


def test_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no such"):
        open_recording(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"hello")
    with pytest.raises(RecordingError, match="not a Parquet"):
        open_recording(bad)


def test_the_buffer_is_bounded_by_bytes(tmp_path: Path) -> None:
    records = _records()
    path = tmp_path / "run.parquet"
    with RecordingWriter(path, max_group_records=10_000, max_group_bytes=2_000) as w:
        for r in records:
            w.append(r)
            assert w.buffered_bytes < 2_000
    assert pq.ParquetFile(path).metadata.num_row_groups > 1
