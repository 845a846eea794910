"""`fedmoe robustness` end to end on a tiny plan, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmoe.commands.robustness import main


def test_a_tiny_plan_writes_the_summary_the_table_and_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rob"
    argv = [
        "--out", str(out), "--seeds", "1", "--first-seed", "7", "--rounds", "5",
        "--devices", "8", "--experts", "4", "--rules", "fedavg,clipped-fedavg", "--workers", "1",
        "--regime", "label-skew",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["default_rule"] == "clipped-fedavg"
    assert set(summary["clean"]) == {"fedavg", "clipped-fedavg"}
    assert set(summary["attacks"]) == {"sign-flip", "scale", "noise", "label-flip"}
    assert summary["attackers"] == 0.2
    assert summary["seeds"] == [7]
    assert all(0 <= v <= 1 for v in summary["clean"].values())
    assert (out / "accuracy.png").stat().st_size > 0
    assert len(json.loads((out / "runs.json").read_text())) == 5 * 2
    assert "| sign-flip |" in (out / "robustness.md").read_text()
    assert "worst drop under attack" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--regime", "cities"],
        ["--rules", "fedavg,mean"],
        ["--attackers", "1.5"],
        ["--workers", "0"],
    ],
)
def test_bad_settings_are_refused(argv: list[str], tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), *argv]) == 2
