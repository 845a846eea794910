"""A fleet under a soak: the commands it follows and the journal it writes.

`fedmoe soak` steers its fleet processes through an append-only command file, one JSON object
per line, that every fleet process follows (each acts on the devices it runs):

    {"seq": 3, "action": "drop", "devices": [4, 17], "for": 20}       # lose the link, return
    {"seq": 4, "action": "slow", "devices": [8], "factor": 3, "for": 60}
    {"seq": 5, "action": "leave", "devices": [2]}                     # drain, then gone

and reads what the devices did from each process's journal, one JSON object per line and per
`interval_s`: the update parts sent and acknowledged "applied" since the last line (as
[update id, part] pairs) and how many devices are connected. A file is simple, needs no broker
(the soak restarts the broker) and survives nothing it should not: the soak starts it empty.

`run_controlled_fleet` runs a `Fleet` like `run_fleet` with this beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from brokers.settings import BrokerSettings
from clients.device import DeviceAgent
from clients.fleet import Fleet, write_stats
from clients.settings import FleetSettings
from clients.world import FleetWorld
from fedmoe.errors import SettingsError
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import setting
from fedmoe.signals import stop_on_signals

log = logging.getLogger(__name__)

_ACTIONS = ("drop", "slow", "leave")
_LEAVE_DRAIN_S = 30.0
_FOREVER_S = 10.0 * 365 * 24 * 3600


@dataclass(frozen=True)
class ControlSettings:
    """Where a fleet process under a soak reads commands and writes its journal."""

    control_file: str = setting(
        "FEDMOE_FLEET_CONTROL_FILE", "", "follow soak commands from this file (empty = none)"
    )
    journal_file: str = setting(
        "FEDMOE_FLEET_JOURNAL_FILE",
        "",
        "append what devices sent and saw acknowledged to this file (empty = none)",
    )
    journal_interval_s: float = setting(
        "FEDMOE_FLEET_JOURNAL_INTERVAL_S",
        1.0,
        "how often commands are read and the journal written, seconds",
    )

    def __post_init__(self) -> None:
        if not self.journal_interval_s > 0:
            raise SettingsError("FEDMOE_FLEET_JOURNAL_INTERVAL_S must be > 0")

    @property
    def active(self) -> bool:
        """Whether either file is set."""
        return bool(self.control_file or self.journal_file)


@dataclass(frozen=True)
class Command:
    """One line of the command file."""

    seq: int
    action: str
    devices: tuple[int, ...]
    for_s: float = 0.0
    factor: float = 1.0

    def as_json(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "action": self.action,
                "devices": list(self.devices),
                "for": self.for_s,
                "factor": self.factor,
            }
        )


def parse_command(line: str) -> Command:
    """One command line; `ValueError` when it is not one."""
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("action") not in _ACTIONS:
        raise ValueError(f"not a command: {line!r}")
    devices = data.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, int) for d in devices):
        raise ValueError(f"devices must be a list of indices: {line!r}")
    return Command(
        int(data.get("seq", 0)),
        data["action"],
        tuple(devices),
        float(data.get("for", 0.0)),
        float(data.get("factor", 1.0)),
    )


def shard_ranges(first: int, count: int, processes: int) -> list[range]:
    """Devices [first, first + count) split into `processes` contiguous near-equal ranges
    (fewer when there are fewer devices than processes)."""
    if processes < 1 or count < 0:
        raise ValueError("processes must be >= 1 and count >= 0")
    n = min(processes, count) or 1
    base, extra = divmod(count, n)
    out, start = [], first
    for k in range(n):
        size = base + (1 if k < extra else 0)
        out.append(range(start, start + size))
        start += size
    return [r for r in out if len(r)]


class JournaledSet(set[tuple[str, str]]):
    """A set that also appends each new member to `sink` (the journal's next line)."""

    def __init__(self, sink: list[tuple[str, str]], members: Iterable[tuple[str, str]] = ()):
        super().__init__(members)
        self._sink = sink

    def add(self, item: tuple[str, str]) -> None:
        if item not in self:
            self._sink.append(item)
            super().add(item)

    def update(self, *others: Iterable[tuple[str, str]]) -> None:
        for other in others:
            for item in other:
                self.add(item)


class FleetControl:
    """Follows the command file and writes the journal for `agents` (index → agent)."""

    def __init__(
        self,
        settings: ControlSettings,
        agents: Mapping[int, DeviceAgent],
        world: FleetWorld,
    ) -> None:
        self.settings = settings
        self.agents = dict(agents)
        self.world = world
        self.sent: list[tuple[str, str]] = []
        self.acked: list[tuple[str, str]] = []
        self.left: set[int] = set()
        self.applied: list[Command] = []
        self._slow_until: dict[int, float] = {}
        self._offset = 0
        self._tasks: set[asyncio.Task[None]] = set()
        for agent in self.agents.values():
            agent.stats.sent = JournaledSet(self.sent, agent.stats.sent)
            agent.stats.applied = JournaledSet(self.acked, agent.stats.applied)

    def apply(self, command: Command, now: float) -> int:
        """Act on the devices of `command` this process runs; how many it acted on."""
        mine = [i for i in command.devices if i in self.agents and i not in self.left]
        for i in mine:
            agent = self.agents[i]
            if command.action == "drop":
                agent.drop_connection(command.for_s)
            elif command.action == "slow":
                self.world.slowdown[i] = command.factor
                self._slow_until[i] = now + command.for_s
            elif command.action == "leave":
                self.left.add(i)
                agent.drain()
                self._spawn(self._leave(agent))
        self.applied.append(command)
        if mine:
            log.info("control: %s on %d devices", command.action, len(mine))
        return len(mine)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _leave(self, agent: DeviceAgent) -> None:
        """Finish the rounds under way (bounded), then lose the link for good."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LEAVE_DRAIN_S):
                await agent.wait_idle()
        # Not connected right now (a drop, a broker restart): again until it is.
        while not agent.drop_connection(_FOREVER_S):  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.5)

    def restore(self, now: float) -> None:
        """End the slowdowns that are over."""
        for i, until in list(self._slow_until.items()):
            if now >= until:
                del self._slow_until[i]
                self.world.slowdown.pop(i, None)

    def read_commands(self, now: float) -> list[Command]:
        """New complete lines of the command file, applied."""
        path = self.settings.control_file
        if not path:
            return []
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += end
        done = []
        for line in data[:end].decode().splitlines():
            if not line.strip():
                continue
            try:
                command = parse_command(line)
            except ValueError as exc:
                log.warning("control: %s", exc)
                continue
            self.apply(command, now)
            done.append(command)
        return done

    def journal_line(self, now: float) -> dict[str, Any]:
        """What happened since the last line (and empties the pending lists)."""
        sent, self.sent[:] = list(self.sent), []
        acked, self.acked[:] = list(self.acked), []
        active = [a for i, a in self.agents.items() if i not in self.left]
        return {
            "t": round(now, 3),
            "devices": len(active),
            "connected": sum(a.connected for a in active),
            "sent": [list(k) for k in sent],
            "acked": [list(k) for k in acked],
        }

    def write_journal(self, out: TextIO, now: float) -> None:
        out.write(json.dumps(self.journal_line(now)) + "\n")
        out.flush()

    def _open_journal(self, stack: contextlib.ExitStack) -> TextIO | None:
        path = self.settings.journal_file
        return stack.enter_context(Path(path).open("a")) if path else None

    async def run(self, stop: asyncio.Event) -> None:
        """Every interval: apply new commands, end slowdowns, write a journal line; once more
        when `stop` is set."""
        with contextlib.ExitStack() as stack:
            out = self._open_journal(stack)
            while True:
                now = time.time()
                self.read_commands(now)
                self.restore(now)
                if out is not None:
                    self.write_journal(out, now)
                if stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.journal_interval_s):
                        await stop.wait()
        for task in list(self._tasks):
            task.cancel()


async def run_controlled_fleet(
    settings: FleetSettings,
    control: ControlSettings,
    broker: BrokerSettings,
    scenario_settings: ScenarioSettings,
) -> dict[str, Any]:
    """`run_fleet` with a `FleetControl` beside the devices (until SIGTERM / the stop round)."""
    fleet = Fleet(broker, settings, scenario_settings)
    controller = FleetControl(control, {a.index: a for a in fleet.agents}, fleet.world)
    stopped = asyncio.Event()
    log.info(
        "fleet: devices %d..%d under soak control (%s, journal %s)",
        fleet.indices.start,
        fleet.indices.stop - 1,
        control.control_file or "-",
        control.journal_file or "-",
    )

    async def devices() -> None:
        try:
            await fleet.run()
        finally:
            stopped.set()

    try:
        with stop_on_signals(fleet.stop):
            async with asyncio.TaskGroup() as group:
                group.create_task(devices(), name="fleet:devices")
                group.create_task(controller.run(stopped), name="fleet:control")
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    finally:
        stats = fleet.stats()
        if settings.stats_file:
            write_stats(Path(settings.stats_file), stats)
    return stats


def fleet_argv_ranges(ranges: Sequence[range]) -> list[tuple[int, int]]:
    """(first, count) per range, for `--first/--count`."""
    return [(r.start, len(r)) for r in ranges]
