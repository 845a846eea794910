"""`Driver`: executes the plan's actions against the running system, one record each.

Process actions go through the supervisor (which restarts what a kill ended), device actions
through the fleet's command file (`clients.control`), joins start a new fleet process for
devices held back at the start, and the broker restart through the local brokers. Random
choices (which aggregator, which devices) come from one seeded generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from clients.control import Command
from fedmoe.soak.plan import (
    ANY,
    Action,
    DropDevices,
    Join,
    Kill,
    Leave,
    Pause,
    RestartBroker,
    SlowDevices,
)
from fedmoe.soak.report import EventRecord
from fedmoe.soak.supervisor import Supervisor

log = logging.getLogger(__name__)

JoinFleet = Callable[[range], Awaitable[str]]  # devices -> the new fleet process's name
RestartMqtt = Callable[[], Awaitable[None]]


class Driver:
    """Applies actions; `records` lists what was done (t in seconds since `t0`)."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        control_file: Path,
        active: list[int],
        reserve: range,
        join_fleet: JoinFleet,
        restart_mqtt: RestartMqtt,
        rng: random.Random,
        t0: float,
        service_names: tuple[str, ...],
    ) -> None:
        self._sup = supervisor
        self._control_file = control_file
        self.active = list(active)  # devices in the fleet now (joined, not left)
        self._reserve = reserve  # devices that may still join
        self._next_join = reserve.start
        self._join_fleet = join_fleet
        self._restart_mqtt = restart_mqtt
        self._rng = rng
        self._t0 = t0
        self._services = service_names
        self._seq = 0
        self.records: list[EventRecord] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _record(self, action: str, target: str, ok: bool, detail: str = "") -> EventRecord:
        rec = EventRecord(time.time() - self._t0, action, target, ok, detail)
        self.records.append(rec)
        log.warning("soak event: %s %s %s %s", action, target, "ok" if ok else "FAILED", detail)
        return rec

    def _process(self, service: str) -> tuple[str, int] | None:
        """A running process of `service` (`any`: of any service), chosen at random."""
        services = self._services if service == ANY else (service,)
        running = [
            (name, pid)
            for s in services
            for name in self._sup.names(s)
            if (pid := self._sup.pid(name)) is not None
        ]
        return self._rng.choice(running) if running else None

    def _command(
        self, action: str, devices: list[int], for_s: float = 0.0, factor: float = 1.0
    ) -> None:
        self._seq += 1
        line = Command(self._seq, action, tuple(sorted(devices)), for_s, factor).as_json()
        with self._control_file.open("a") as f:
            f.write(line + "\n")

    def _some(self, fraction: float) -> list[int]:
        n = max(1, round(fraction * len(self.active))) if self.active else 0
        return self._rng.sample(self.active, min(n, len(self.active)))

    async def apply(self, action: Action) -> EventRecord:
        """Do `action` now."""
        try:
            return await self._apply(action)
        except Exception as exc:  # a failed action is a record, never the end of the run
            log.exception("soak action %s failed", action)
            return self._record(type(action).__name__.lower(), "", False, repr(exc))

    async def _apply(self, action: Action) -> EventRecord:
        if isinstance(action, Kill):
            chosen = self._process(action.service)
            if chosen is None:
                return self._record("kill", action.service, False, "no process running")
            name, pid = chosen
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return self._record("kill", name, True, f"pid {pid}")
        if isinstance(action, Pause):
            chosen = self._process(action.service)
            if chosen is None:
                return self._record("pause", action.service, False, "no process running")
            name, pid = chosen
            os.kill(pid, signal.SIGSTOP)
            self._later(action.for_s, lambda: _cont(pid))
            return self._record("pause", name, True, f"pid {pid} for {action.for_s:g}s")
        if isinstance(action, RestartBroker):
            started = time.monotonic()
            await self._restart_mqtt()
            return self._record(
                "restart", action.broker, True, f"{time.monotonic() - started:.1f}s"
            )
        if isinstance(action, DropDevices):
            devices = self._some(action.fraction)
            self._command("drop", devices, for_s=action.for_s)
            return self._record(
                "drop_devices", f"{len(devices)} devices", bool(devices), f"{action.for_s:g}s"
            )
        if isinstance(action, SlowDevices):
            devices = self._some(action.fraction)
            self._command("slow", devices, for_s=action.for_s, factor=action.factor)
            return self._record(
                "slow_devices", f"{len(devices)} devices", bool(devices),
                f"x{action.factor:g} for {action.for_s:g}s",
            )  # fmt: skip
        if isinstance(action, Leave):
            n = min(action.count, max(len(self.active) - 1, 0))  # one device stays
            devices = self._rng.sample(self.active, n)
            for d in devices:
                self.active.remove(d)
            self._command("leave", devices)
            return self._record("leave", f"{n} devices", n == action.count)
        if isinstance(action, Join):
            end = min(self._next_join + action.count, self._reserve.stop)
            joining = range(self._next_join, end)
            if not joining:
                return self._record("join", f"{action.count} devices", False, "none left")
            self._next_join = end
            name = await self._join_fleet(joining)
            self.active.extend(joining)
            return self._record("join", f"{len(joining)} devices", True, name)
        raise AssertionError(f"unknown action {action!r}")

    def _later(self, delay_s: float, fn: Callable[[], None]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay_s)
            fn()

        task = asyncio.create_task(run(), name="soak:later")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Run what is still scheduled (a paused process is continued) now."""
        for task in list(self._tasks):
            task.cancel()
        for name in self._sup.names():
            pid = self._sup.pid(name)
            if pid is not None:
                _cont(pid)


def _cont(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
