"""`fedmoe record --import-fedscale` and `fedmoe replay --offline` as a user runs them (no
brokers), and the replay's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fedmoe.cli import main
from fedmoe.errors import SettingsError
from recording.settings import RecordSettings, ReplaySettings

EXAMPLE = Path(__file__).parents[3] / "recording" / "examples" / "fedscale-small.json"


def test_import_a_trace_then_ask_what_if(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = tmp_path / "fs.parquet"
    assert main(["record", str(rec), "--import-fedscale", str(EXAMPLE), "--trace-rounds", "6"]) == 0
    table = pq.read_table(rec)
    assert set(table.column("type").to_pylist()) == {"status", "telemetry"}
    assert max(table.column("round").to_pylist()) == 6
    out = tmp_path / "whatif"
    code = main(["replay", str(rec), "--offline", "--out", str(out), "--strategies",
                 "fitness,random-feasible,random"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"fitness", "random-feasible", "random"}
    assert summary["recorded"]["imported_from"] == str(EXAMPLE)
    for figures in summary["strategies"].values():
        assert figures["rounds"] >= 1
        assert figures["agreement_with_recorded"] is None  # a trace has no assignments
    assert "what-if in" in capsys.readouterr().out


def test_bad_input_is_a_clear_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "missing.parquet"), "--offline"]) == 1
    assert "no such recording" in capsys.readouterr().err
    bad = tmp_path / "t.json"
    bad.write_text("{}")
    assert main(["record", str(tmp_path / "x.parquet"), "--import-fedscale", str(bad)]) == 1
    assert main(["replay", str(tmp_path / "x.parquet"), "--speed", "fast"]) == 2


def test_settings_refuse_what_cannot_work() -> None:
    assert ReplaySettings(speed="max").speed_factor() is None
    assert ReplaySettings(speed="2.5").speed_factor() == 2.5
    for kwargs in ({"speed": "0"}, {"loop": 0}, {"from_s": 5.0, "to_s": 2.0},
                   {"follow_rounds": True, "speed": "max"}):  # fmt: skip
        with pytest.raises(SettingsError):
            ReplaySettings(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="unknown topic kinds"):
        RecordSettings(mqtt="telemetry,bogus")
    with pytest.raises(SettingsError):
        RecordSettings(mqtt="", kafka="")
