"""A fleet under a soak: commands applied to this process's devices, the journal, shards."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from clients.control import (
    Command,
    ControlSettings,
    FleetControl,
    JournaledSet,
    parse_command,
    shard_ranges,
)
from clients.stats import DeviceStats


class FakeAgent:
    def __init__(self, index: int) -> None:
        self.index = index
        self.stats = DeviceStats()
        self.connected = True
        self.drops: list[float] = []
        self.draining = False

    def drop_connection(self, away_s: float) -> bool:
        self.drops.append(away_s)
        return True

    def drain(self) -> None:
        self.draining = True

    async def wait_idle(self) -> None:
        return None


class FakeWorld:
    def __init__(self) -> None:
        self.slowdown: dict[int, float] = {}


def test_shards_cover_the_range_evenly() -> None:
    assert shard_ranges(0, 10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    assert shard_ranges(5, 2, 4) == [range(5, 6), range(6, 7)]
    assert shard_ranges(0, 7, 1) == [range(0, 7)]
    with pytest.raises(ValueError, match="processes"):
        shard_ranges(0, 7, 0)


def test_journaled_set_records_new_members_once() -> None:
    sink: list[tuple[str, str]] = []
    members = JournaledSet(sink, [("u0", "shared")])
    members.add(("u1", "shared"))
    members.add(("u1", "shared"))
    members.update([("u2", "expert-1"), ("u0", "shared")])
    assert sink == [("u1", "shared"), ("u2", "expert-1")]
    assert members == {("u0", "shared"), ("u1", "shared"), ("u2", "expert-1")}


def test_commands_parse_and_bad_ones_are_refused() -> None:
    command = Command(3, "slow", (1, 2), for_s=5.0, factor=2.0)
    assert parse_command(command.as_json()) == command
    for bad in ('{"action": "explode"}', '{"action": "drop", "devices": "all"}', "[1]"):
        with pytest.raises(ValueError, match=r"command|devices"):
            parse_command(bad)


def test_control_acts_on_its_own_devices_and_journals(tmp_path: Path) -> None:
    async def scenario() -> None:
        control_file, journal = tmp_path / "control.jsonl", tmp_path / "journal.jsonl"
        agents: dict[int, Any] = {i: FakeAgent(i) for i in (10, 11, 12)}
        world = FakeWorld()
        settings = ControlSettings(str(control_file), str(journal), journal_interval_s=0.05)
        control = FleetControl(settings, agents, world)  # type: ignore[arg-type]
        lines = [
            Command(1, "drop", (10, 99), for_s=7.0),  # 99 runs elsewhere
            Command(2, "slow", (11,), for_s=0.1, factor=4.0),
            Command(3, "leave", (12,)),
        ]
        control_file.write_text("".join(c.as_json() + "\n" for c in lines) + '{"seq": 4, "ac')
        agents[10].stats.sent.add(("u1", "shared"))
        agents[10].stats.applied.add(("u1", "shared"))
        assert control.read_commands(now=100.0) == lines  # the half-written line waits
        assert agents[10].drops == [7.0]
        assert world.slowdown == {11: 4.0}
        control.restore(now=100.05)
        assert world.slowdown == {11: 4.0}
        control.restore(now=100.2)
        assert world.slowdown == {}
        await asyncio.sleep(0)  # the leave drains, then drops for good
        await asyncio.sleep(0)
        assert agents[12].draining
        assert agents[12].drops[0] > 1e6
        line = control.journal_line(now=101.0)
        assert line["sent"] == [["u1", "shared"]]
        assert line["acked"] == [["u1", "shared"]]
        assert (line["devices"], line["connected"]) == (2, 2)  # 12 left
        assert control.journal_line(now=102.0)["sent"] == []
        stop = asyncio.Event()
        stop.set()
        agents[11].stats.sent.add(("u2", "expert-3"))
        await control.run(stop)
        written = [json.loads(x) for x in journal.read_text().splitlines()]
        assert written[-1]["sent"] == [["u2", "expert-3"]]

    asyncio.run(scenario())


def test_shard_counters_merge() -> None:
    from clients.shards import merge_totals

    a = {
        "updates_sent": 3,
        "acks": {"applied": 2},
        "assignment_lag_s": {"n": 1, "mean": 0.2, "max": 0.2},
    }
    b = {
        "updates_sent": 4,
        "acks": {"applied": 1, "late": 1},
        "assignment_lag_s": {"n": 3, "mean": 0.6, "max": 0.9},
    }
    assert merge_totals([a, b]) == {
        "updates_sent": 7,
        "acks": {"applied": 3, "late": 1},
        "assignment_lag_s": {"n": 4, "mean": 0.5, "max": 0.9},
    }
