"""Record a short demo, read it back as a user would, replay it offline (every strategy) and
round-synchronously into a fresh deployment of the same scenario (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from fedmoe.commands import replay as replay_command
from fedmoe.demo.deployment import deployment
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import load_settings
from moe.matching import STRATEGY_NAMES
from recording.reader import open_recording
from recording.replayer import Replayer, renamer_for, selected
from recording.settings import ReplaySettings
from schemas import decode

DEVICES, ROUNDS, SEED = 12, 3, 0


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo")
    path = out / "run.parquet"
    argv = [
        sys.executable, "-m", "fedmoe", "demo", "--regime", "label-skew",
        "--devices", str(DEVICES), "--rounds", str(ROUNDS), "--seed", str(SEED),
        "--out", str(out), "--timeout-s", "100", "--record", str(path),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=130, env=os.environ)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return path, json.loads((out / "summary.json").read_text())


@pytest.mark.timeout(150)
def test_the_recording_holds_the_run_and_reads_without_this_project(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    path, summary = recorded
    table = pq.read_table(path)
    rows = table.to_pylist()
    telemetry = [r for r in rows if r["type"] == "telemetry" and r["source"] == "mqtt"]
    assert {r["round"] for r in telemetry} >= set(range(1, ROUNDS + 1))
    for r in rows:
        if r["type"] is not None:
            assert decode(r["payload"]).device_id == r["device"]  # the bytes, untouched
    fleet = summary["fleet"]
    assert len(telemetry) == fleet["events"]["telemetry_sent"]  # every announcement
    updates = sum(r["type"] == "update" for r in rows)
    assert updates >= fleet["rounds_trained"] > 0  # every upload (resends included)
    kinds = duckdb.sql(f"select distinct source from '{path}' order by 1").fetchall()
    assert kinds == [("kafka",), ("mqtt",)]


@pytest.mark.timeout(150)
def test_offline_what_if_compares_every_strategy(
    recorded: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = recorded
    assert replay_command.main([str(path), "--offline", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["strategies"]) == set(STRATEGY_NAMES)
    fitness = summary["strategies"]["fitness"]
    assert fitness["rounds"] == ROUNDS
    assert fitness["agreement_with_recorded"] is not None
    assert (tmp_path / "whatif.png").stat().st_size > 0


@pytest.mark.timeout(150)
async def test_follow_rounds_drives_a_fresh_deployment(
    recorded: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = recorded
    recording = open_recording(path)
    scenario = load_settings(ScenarioSettings, {**os.environ, **recording.info["scenario"]})
    settings = ReplaySettings(speed="1", follow_rounds=True, idle_timeout_s=40)
    async with deployment(tmp_path, scenario, os.environ, rounds=ROUNDS) as live:
        records = selected(recording, settings)
        report = await Replayer(
            live.broker, settings, records, renamer_for(recording, records, live.broker)
        ).run()
    (tmp_path / "report.json").write_text(json.dumps(report, indent=1))
    assert report["failed"] == 0
    assert report["round_map"] == {str(k): k for k in range(1, ROUNDS + 1)}
    parity = report["parity"]
    assert parity["rounds_compared"] == ROUNDS
    # Same scenario, same telemetry, same updates: the live matcher assigns as recorded.
    assert parity["rounds_equal"] == ROUNDS, parity
