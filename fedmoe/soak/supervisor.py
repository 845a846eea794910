"""`Supervisor`: keeps the soak's processes running, as a compose `restart:` policy would.

Each supervised process is started in the demo's `ProcessGroup` and watched; when it exits
(killed by the plan, crashed, or stopped on an error) it is started again with the same argv
and environment after a backoff: `RestartPolicy` doubles the delay for every exit in a row
that came soon after its start (a crash loop) and starts over after a run of at least
`reset_after_s` (the pure part, on an injected clock). `stop()` ends the supervision first, so
the group's own shutdown is not mistaken for crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from fedmoe.demo.processes import ProcessGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """Capped exponential backoff between restarts of one process."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0  # a run at least this long ends a crash loop

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.reset_after_s < 0:
            raise ValueError("RestartPolicy: need 0 < initial_s <= max_s, reset_after_s >= 0")

    def delay(self, streak: int) -> float:
        """Seconds before the restart after the `streak`-th quick exit in a row (1-based)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(streak - 1, 0), 30))


@dataclass
class RestartState:
    """One process's exits so far (pure)."""

    streak: int = 0
    restarts: int = 0
    exits: list[tuple[float, int | None]] = field(default_factory=list)  # (when, exit code)

    def on_exit(self, policy: RestartPolicy, started_at: float, exited_at: float) -> float:
        """Fold one exit in; the delay before its restart."""
        ran = exited_at - started_at
        self.streak = 1 if ran >= policy.reset_after_s else self.streak + 1
        return policy.delay(self.streak)


@dataclass(frozen=True)
class ProcessSpec:
    """How to (re)start one process: its name, the service it is one process of, argv, env."""

    name: str
    service: str
    argv: Sequence[str]
    env: Mapping[str, str]


class Supervisor:
    """Starts processes in `group` and restarts them when they exit (see the module doc)."""

    def __init__(
        self,
        group: ProcessGroup,
        policy: RestartPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_restart: Callable[[ProcessSpec, int], None] | None = None,
    ) -> None:
        self._group = group
        self.policy = policy
        self._clock = clock
        self._on_restart = on_restart
        self.specs: dict[str, ProcessSpec] = {}
        self.states: dict[str, RestartState] = {}
        self._started_at: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def restarts(self) -> Counter[str]:
        """Restarts so far per service."""
        out: Counter[str] = Counter({s.service: 0 for s in self.specs.values()})
        for name, state in self.states.items():
            out[self.specs[name].service] += state.restarts
        return out

    def pid(self, name: str) -> int | None:
        """The pid of `name` while it runs, else None."""
        try:
            child = self._group.child(name)
        except KeyError:
            return None
        return child.pid if child.process.returncode is None else None

    def names(self, service: str | None = None) -> list[str]:
        """Supervised process names (of one service when given), in start order."""
        return [n for n, s in self.specs.items() if service is None or s.service == service]

    async def start(self, spec: ProcessSpec) -> None:
        """Start `spec` and watch it."""
        self.specs[spec.name] = spec
        self.states.setdefault(spec.name, RestartState())
        await self._group.start(spec.name, spec.argv, spec.env)
        self._started_at[spec.name] = self._clock()
        task = asyncio.create_task(self._watch(spec), name=f"supervise:{spec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, spec: ProcessSpec) -> None:
        state = self.states[spec.name]
        while not self._stopping.is_set():
            code = await self._group.child(spec.name).process.wait()
            if self._stopping.is_set():
                return
            now = self._clock()
            delay = state.on_exit(self.policy, self._started_at[spec.name], now)
            state.exits.append((now, code))
            log.warning("%s exited with %s; restart in %.1fs", spec.name, code, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            try:
                child = await self._group.start(spec.name, spec.argv, spec.env)
            except Exception:  # e.g. the OS refused a fork: try again after the next delay
                log.exception("%s: restart failed", spec.name)
                self._started_at[spec.name] = self._clock()
                continue
            self._started_at[spec.name] = self._clock()
            state.restarts += 1
            if self._on_restart is not None:
                self._on_restart(spec, child.pid)

    def stop(self) -> None:
        """Stop restarting anything (the processes themselves are the group's to stop)."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
