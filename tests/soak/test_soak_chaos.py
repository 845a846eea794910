"""The issue's done-when run as a test: `fedmoe soak` under `docker/soak/chaos.yaml` (every
service killed, then one at random every 30 s, a Mosquitto restart, a stalled consumer, a
churn wave) runs to the end, writes its report and timeline, and exits 0 with no violation.

    pytest -m soak tests/soak/test_soak_chaos.py   # FEDMOE_SOAK_DEVICES / _MINUTES to scale
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.timeout(7200)
def test_chaos_plan_heals_without_a_violation(tmp_path: Path) -> None:
    devices = os.environ.get("FEDMOE_SOAK_DEVICES", "200")
    minutes = float(os.environ.get("FEDMOE_SOAK_MINUTES", "10"))
    argv = [
        sys.executable, "-m", "fedmoe", "soak", "--plan", str(ROOT / "docker/soak/chaos.yaml"),
        "--devices", devices, "--minutes", str(minutes), "--out", str(tmp_path),
    ]  # fmt: skip
    timeout = minutes * 60 + 600
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=os.environ)
    report = json.loads((tmp_path / "report.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + json.dumps(report["violations"][:5])
    assert report["violations"] == []
    assert (tmp_path / "report.png").stat().st_size > 0
    assert sum(report["restarts"].values()) >= 6
    assert report["rounds_completed"] > 0
    for name, endpoint in report["endpoints"].items():
        assert endpoint["metrics_answers"] > 0, name
        assert endpoint["healthz_answers"] > 0, name
