"""`fedmoe soak` end to end, short enough for CI: every service killed once and restarted by
the supervisor, a Mosquitto restart and a link-drop wave (`docker/soak/ci.yaml`), with every
invariant judged live and none violated; every service answered /metrics and /healthz."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedmoe.soak.plan import SERVICES

ROOT = Path(__file__).parents[2]
MINUTES = 2.25


@pytest.mark.timeout(260)
def test_soak_heals_every_kill_without_a_violation(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "fedmoe", "soak", "--plan", str(ROOT / "docker/soak/ci.yaml"),
        "--devices", "20", "--minutes", str(MINUTES), "--out", str(tmp_path),
        "--regime", "label-skew", "--scrape-interval-s", "3", "--settle-s", "30",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=250, env=os.environ)
    report = json.loads((tmp_path / "report.json").read_text())
    assert proc.returncode == 0, (
        proc.stdout[-3000:] + proc.stderr[-3000:] + json.dumps(report["violations"][:5])
    )
    assert report["violations"] == []
    assert (tmp_path / "report.png").stat().st_size > 0
    # Every service was killed once and came back.
    killed = {e["target"].rsplit("-", 1)[0] if e["target"].startswith("aggregator") else e["target"]
              for e in report["events"] if e["action"] == "kill" and e["ok"]}  # fmt: skip
    assert killed == set(SERVICES)
    assert all(report["restarts"][s] >= 1 for s in SERVICES), report["restarts"]
    assert any(e["action"] == "restart" and e["ok"] for e in report["events"])
    # The invariants were judged, not just present.
    judged = report["invariants"]
    for name in ("applied_exactly_once", "acked_subset_applied", "applied_subset_sent",
                 "round_within_deadline", "rounds_progress", "consumer_lag_bounded"):  # fmt: skip
        assert judged[name]["checked"] > 0, name
    assert report["rounds_completed"] >= 3
    assert report["updates_applied"] > 0
    assert report["updates_acked"] <= report["updates_sent"]
    # Every service process answered its endpoint, with the runtime's metric names.
    for name, endpoint in report["endpoints"].items():
        assert endpoint["metrics_answers"] > 0, name
        assert endpoint["healthz_answers"] > 0, name
    for service in SERVICES:
        families = set(report["metric_families"][service])
        assert {"fedmoe_records", "fedmoe_consumer_lag", "process_resident_memory_bytes"} <= (
            families
        ), service
