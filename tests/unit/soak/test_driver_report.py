"""The driver turns plan actions into signals, fleet commands and joins, one record each; the
report writes its JSON and its timeline."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from clients.control import parse_command
from fedmoe.soak.driver import Driver
from fedmoe.soak.plan import SERVICES, DropDevices, Join, Kill, Leave, Pause, SlowDevices
from fedmoe.soak.report import EventRecord, Timeline, write_report


class FakeSupervisor:
    def __init__(self) -> None:
        self.procs = {"gateway": ("gateway", 101), "aggregator-1": ("aggregator", 102),
                      "aggregator-2": ("aggregator", 103), "fleet-1": ("fleet", 104)}  # fmt: skip
        self.down: set[str] = set()

    def names(self, service: str | None = None) -> list[str]:
        return [n for n, (s, _) in self.procs.items() if service is None or s == service]

    def pid(self, name: str) -> int | None:
        return None if name in self.down else self.procs[name][1]


def make(tmp_path: Path, signals: list[tuple[int, int]]) -> tuple[Driver, list[range]]:
    joined: list[range] = []

    async def join_fleet(devices: range) -> str:
        joined.append(devices)
        return "fleet-join-1"

    async def restart() -> None:
        return None

    driver = Driver(
        FakeSupervisor(),  # type: ignore[arg-type]
        control_file=tmp_path / "control.jsonl",
        active=list(range(10)),
        reserve=range(10, 14),
        join_fleet=join_fleet,
        restart_mqtt=restart,
        rng=random.Random(0),
        t0=0.0,
        service_names=SERVICES,
    )
    return driver, joined


def test_actions_become_signals_commands_and_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signals: list[tuple[int, int]] = []
    monkeypatch.setattr("fedmoe.soak.driver.os.kill", lambda pid, sig: signals.append((pid, sig)))

    async def scenario() -> None:
        driver, joined = make(tmp_path, signals)
        rec = await driver.apply(Kill("aggregator"))
        assert rec.ok
        assert rec.target in {"aggregator-1", "aggregator-2"}
        assert signals[-1][1] == signal.SIGKILL
        assert signals[-1][0] in {102, 103}
        assert not (await driver.apply(Kill("matcher"))).ok  # none running
        rec = await driver.apply(Kill("any"))
        assert rec.target != "fleet-1"  # `any` is a service, never the fleet
        await driver.apply(Pause("gateway", 0.01))
        assert signals[-1] == (101, signal.SIGSTOP)
        await asyncio.sleep(0.05)
        assert signals[-1] == (101, signal.SIGCONT)
        assert (await driver.apply(DropDevices(0.3, 5.0))).target == "3 devices"
        await driver.apply(SlowDevices(0.1, 3.0, 9.0))
        leave = await driver.apply(Leave(4))
        assert leave.ok
        assert len(driver.active) == 6
        join = await driver.apply(Join(3))
        assert (join.ok, joined) == (True, [range(10, 13)])
        assert not (await driver.apply(Join(5))).ok or driver.active[-1] == 13
        lines = [parse_command(x) for x in (tmp_path / "control.jsonl").read_text().splitlines()]
        assert [c.action for c in lines] == ["drop", "slow", "leave"]
        assert len(lines[0].devices) == 3
        assert (lines[1].factor, lines[1].for_s) == (3.0, 9.0)
        assert not set(lines[2].devices) & set(driver.active)
        assert [c.seq for c in lines] == [1, 2, 3]
        assert [r.action for r in driver.records][:3] == ["kill", "kill", "kill"]

    asyncio.run(scenario())


def test_report_writes_json_and_timeline(tmp_path: Path) -> None:
    timeline = Timeline(
        accuracy=[(10.0, 1, 0.2), (20.0, 2, 0.4)],
        round_seconds=[(10.0, 1, 3.0)],
        lag=[(5.0, "matcher", 0), (10.0, "matcher", 12)],
        rss=[(5.0, "matcher", 300.0), (10.0, "matcher", 301.0)],
        events=[EventRecord(12.0, "kill", "matcher", True), EventRecord(15.0, "join", "", False)],
    )
    report: dict[str, Any] = {"events": [e.as_dict() for e in timeline.events], "violations": []}
    write_report(tmp_path, report, timeline, "t")
    assert json.loads((tmp_path / "report.json").read_text())["events"][0] == {
        "t": 12.0, "action": "kill", "target": "matcher", "ok": True,
    }  # fmt: skip
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    series = json.loads((tmp_path / "timeline.json").read_text())
    assert series["rss"] == [[5.0, "matcher", 300.0], [10.0, "matcher", 301.0]]
