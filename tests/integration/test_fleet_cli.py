"""`fedmoe fleet` as a real process against Mosquitto: it stops by itself after the stop round,
or cleanly on SIGTERM, says goodbye, and writes its stats file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from brokers.local import LocalBrokers
from brokers.settings import BrokerSettings
from moe.parts import part_ids
from moe.scenario import build_scenario, device_id
from schemas import Telemetry
from tests.integration.programs.harness import ServiceProcess, broker_environ
from tests.integration.test_fleet import SCENARIO, GatewaySide, statuses

ARGV = ["-m", "fedmoe.cli", "fleet"]


@pytest.fixture
def broker(local_brokers: LocalBrokers, namespace: str) -> BrokerSettings:
    """MQTT only; an MQTT root of the test's own."""
    return dataclasses.replace(local_brokers.broker_settings(namespace), mqtt_root=namespace)


def _environ(broker: BrokerSettings, namespace: str, **extra: str) -> dict[str, str]:
    return broker_environ(
        broker,
        FEDMOE_FLEET_CLIENT_PREFIX=f"{namespace}-",
        FEDMOE_SCENARIO_DEVICES=str(SCENARIO.devices),
        FEDMOE_SCENARIO_EXPERTS=str(SCENARIO.experts),
        FEDMOE_SCENARIO_SEED=str(SCENARIO.seed),
        FEDMOE_SCENARIO_TIME_SCALE=str(SCENARIO.time_scale),
        **extra,
    )


def announced(side: GatewaySide, device: str, round_: int) -> bool:
    """`device` published its telemetry of `round_`, or said it is unavailable in it."""
    return any(h.message.round == round_ for h in side.of(Telemetry, device)) or any(
        s.round == round_ and s.reason == "unavailable" for s in statuses(side, device)
    )


@pytest.mark.timeout(60)
async def test_fleet_process_stops_after_the_stop_round(
    broker: BrokerSettings, namespace: str, tmp_path: Path
) -> None:
    scenario = build_scenario(SCENARIO.config())
    stats_file = tmp_path / "fleet.json"
    env = _environ(broker, namespace, FEDMOE_FLEET_STOP_AFTER_ROUND="2")
    argv = [*ARGV, "--first", "2", "--count", "3", "--stats-file", str(stats_file)]
    ids = [device_id(i) for i in (2, 3, 4)]
    versions = dict.fromkeys(part_ids(scenario.model), 0)
    side = GatewaySide(broker)
    async with side.running(), ServiceProcess(argv, env, tmp_path / "fleet.log") as fleet:
        await side.wait(lambda: all(statuses(side, d) for d in ids), 30, "devices connected")
        await side.model(scenario.initial_parts(), 0)
        for round_ in (0, 1):
            await side.round_closed(round_, versions)
            await side.wait(
                lambda r=round_ + 1: all(announced(side, d, r) for d in ids),  # type: ignore[misc]
                15,
                f"every device announced itself for round {round_ + 1}",
            )
        await side.round_closed(2, versions)
        assert fleet.proc is not None
        code = await asyncio.wait_for(fleet.proc.wait(), 20)  # exits by itself
        await side.wait(
            lambda: all(statuses(side, d)[-1].reason == "stopped" for d in ids), 10, "goodbyes"
        )
    assert code == 0, fleet.log_text()[-3000:]
    assert "stopping (stop after round 2)" in fleet.log_text()
    stats = json.loads(stats_file.read_text())
    assert (stats["first"], stats["count"], stats["last_round"]) == (2, 3, 2)
    assert set(stats["devices"]) == set(ids)
    events = stats["totals"]["events"]
    assert events["telemetry_sent"] + events["unavailable"] == 2 * 3  # rounds 1 and 2
    online = sum(len(set(scenario.online(r)) & {2, 3, 4}) for r in (1, 2))
    assert events["telemetry_sent"] == online
    assert len(side.of(Telemetry)) == online


@pytest.mark.timeout(60)
async def test_fleet_process_stops_cleanly_on_sigterm(
    broker: BrokerSettings, namespace: str, tmp_path: Path
) -> None:
    stats_file = tmp_path / "fleet.json"
    env = _environ(broker, namespace)
    argv = [*ARGV, "--count", "2", "--stats-file", str(stats_file)]
    ids = [device_id(i) for i in (0, 1)]
    side = GatewaySide(broker)
    async with side.running(), ServiceProcess(argv, env, tmp_path / "fleet.log") as fleet:
        await side.wait(lambda: all(statuses(side, d) for d in ids), 30, "devices connected")
        code = await fleet.terminate(timeout_s=20)
        await side.wait(
            lambda: all(statuses(side, d)[-1].reason == "stopped" for d in ids), 10, "goodbyes"
        )
    assert code == 0, fleet.log_text()[-3000:]
    # A clean stop sends DISCONNECT: the broker never published a last will.
    assert not any(s.reason == "lost" for d in ids for s in statuses(side, d))
    stats = json.loads(stats_file.read_text())
    assert stats["count"] == 2
    assert stats["totals"]["devices"] == 2
