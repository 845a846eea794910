"""The fleet simulator: devices [first, first + count) of the scenario in one asyncio process.

Each device is a `DeviceAgent` with its own MQTT session (one named task each in a TaskGroup),
so several fleet processes can share one scenario's fleet by device ranges. The fleet stops on
`stop()` (SIGTERM / SIGINT in `run_fleet`) or once a device heard RoundClosed of
`FEDMOE_FLEET_STOP_AFTER_ROUND`: first the devices take no new work and finish the rounds under
way, until every update is acknowledged (acks may trail the RoundClosed they belong to) or
`FEDMOE_FLEET_DRAIN_S` passed; then every device says goodbye and disconnects cleanly. A
progress line is logged the first time a round's RoundClosed is heard, and `run_fleet` writes
the counters (per device and totals, see `clients.stats`) as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from brokers.errors import RegistryError
from brokers.registry import read_secrets_file
from brokers.settings import BrokerSettings
from clients.device import DeviceAgent
from clients.settings import FleetSettings
from clients.stats import totals
from clients.traced import TracedWorld, load_trace
from clients.world import FleetWorld
from fedmoe.scenario import ScenarioSettings
from fedmoe.signals import stop_on_signals
from moe.scenario import Scenario, build_scenario, device_id
from moe.training import single_threaded_blas

log = logging.getLogger(__name__)


class Fleet:
    """N device agents sharing one scenario (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerSettings,
        settings: FleetSettings,
        scenario_settings: ScenarioSettings,
        *,
        scenario: Scenario | None = None,
    ) -> None:
        self.settings = settings
        self.scenario = (
            scenario if scenario is not None else build_scenario(scenario_settings.config())
        )
        self.world = (
            TracedWorld(
                self.scenario,
                load_trace(
                    settings.from_recording,
                    self.scenario.config.num_devices,
                    round_s=settings.trace_round_s,
                ),
                time_scale=scenario_settings.time_scale,
            )
            if settings.from_recording
            else FleetWorld(self.scenario, time_scale=scenario_settings.time_scale)
        )
        self.indices = settings.device_range(self.scenario.config.num_devices)
        secrets = device_secrets(settings, self.indices)
        self.agents = [
            DeviceAgent(
                i,
                world=self.world,
                settings=settings,
                broker=broker,
                on_round_closed=self._round_closed,
                password=secrets.get(device_id(i)),
            )
            for i in self.indices
        ]
        self.last_round = -1  # the latest round whose RoundClosed a device heard
        self._stopping = asyncio.Event()  # asked to stop: drain first
        self._stop = asyncio.Event()  # the devices' stop: goodbye and disconnect
        self._started = time.monotonic()

    def stop(self) -> None:
        """Stop every device after a bounded drain (safe to call more than once)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked."""
        return self._stopping.is_set()

    async def run(self) -> None:
        """Run every device until `stop` (or the stop round), then disconnect them."""
        try:
            with single_threaded_blas():
                async with asyncio.TaskGroup() as group:
                    for agent in self.agents:
                        group.create_task(agent.run(self._stop), name=f"fleet:{agent.device}")
                    group.create_task(self._drain_then_stop(), name="fleet:stopper")
        except BaseExceptionGroup as failed:
            raise _first(failed) from None

    async def _drain_then_stop(self) -> None:
        """On a stop: no new work, let the rounds under way finish (bounded), then stop."""
        await self._stopping.wait()
        for agent in self.agents:
            agent.drain()
        try:
            async with asyncio.timeout(self.settings.drain_s):
                for agent in self.agents:
                    await agent.wait_idle()
        except TimeoutError:
            busy = sum(not a.idle for a in self.agents)
            log.warning(
                "fleet: %d devices still busy after %.1fs; stopping", busy, self.settings.drain_s
            )
        self._stop.set()

    def _round_closed(self, device: str, round_: int) -> None:
        if round_ > self.last_round:
            self.last_round = round_
            log.info("fleet: round %d closed (heard by %s): %s", round_, device, self.progress())
        stop_after = self.settings.stop_after_round
        if stop_after and round_ >= stop_after and not self._stopping.is_set():
            log.info("fleet: round %d closed, stopping (stop after round %d)", round_, stop_after)
            self._stopping.set()

    def progress(self) -> str:
        """One line of totals so far."""
        t = totals(a.stats for a in self.agents)
        online = sum(a.connected for a in self.agents)
        return (
            f"connected {online}/{len(self.agents)}, trained {t['rounds_trained']}, "
            f"sent {t['updates_sent']}, acked {t['updates_acked']}, acks {t['acks']}, "
            f"resends {t['resends']}, drops {t['drops']}"
        )

    def stats(self) -> dict[str, Any]:
        """Every counter: totals, per device, and what ran."""
        return {
            "first": self.indices.start,
            "count": len(self.indices),
            "last_round": self.last_round,
            "elapsed_s": round(time.monotonic() - self._started, 3),
            "totals": totals(a.stats for a in self.agents),
            "devices": {a.device: a.stats.as_dict() for a in self.agents},
        }


def device_secrets(settings: FleetSettings, indices: range) -> dict[str, str]:
    """Each simulated device's secret from `FEDMOE_FLEET_SECRETS_FILE` (none: {})."""
    if not settings.secrets_file:
        return {}
    secrets = read_secrets_file(Path(settings.secrets_file))
    missing = [device_id(i) for i in indices if device_id(i) not in secrets]
    if missing:
        raise RegistryError(
            f"FEDMOE_FLEET_SECRETS_FILE {settings.secrets_file}: no secret for "
            f"{len(missing)} devices (first {missing[0]}); provision them with `fedmoe devices add`"
        )
    return secrets


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of an exception group (one failing device is the usual case)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def write_stats(path: Path, stats: dict[str, Any]) -> None:
    """Write `stats` as JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(stats, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def run_fleet(
    settings: FleetSettings, broker: BrokerSettings, scenario_settings: ScenarioSettings
) -> dict[str, Any]:
    """Run a fleet until SIGTERM / SIGINT or the stop round; write and return its stats."""
    fleet = Fleet(broker, settings, scenario_settings)
    log.info(
        "fleet: devices %d..%d of %d on %s (root %r)",
        fleet.indices.start,
        fleet.indices.stop - 1,
        fleet.scenario.config.num_devices,
        broker.mqtt_url,
        broker.mqtt_root,
    )
    try:
        with stop_on_signals(fleet.stop):
            await fleet.run()
    finally:
        stats = fleet.stats()
        log.info("fleet: stopped: %s", fleet.progress())
        if settings.stats_file:
            write_stats(Path(settings.stats_file), stats)
    return stats
