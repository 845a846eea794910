"""`LaunchedBroker`: what the Tansu and Mosquitto launchers share — a broker binary on
127.0.0.1:`port` run as a child process, started until its own readiness probe answers,
stopped with SIGTERM then SIGKILL, usable as an async context manager.

A port picked here (`port=0`) is kept across restarts, and if a picked port turns out taken
(another process bound it between `free_port()` and the broker's bind) the start is retried
on another one; an explicit port is tried once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from brokers._process import BrokerProcess, NotStarted, free_port, log_tail
from brokers.errors import BrokerLaunchError

log = logging.getLogger(__name__)

_AUTO_PORT_ATTEMPTS = 3


class LaunchedBroker(abc.ABC):
    """A local broker process; subclasses say how to launch it and how to probe it."""

    name: ClassVar[str]

    def __init__(
        self, run_dir: Path, *, port: int, start_timeout_s: float, stop_timeout_s: float
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.port = port
        self._auto_port = port == 0
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._process: BrokerProcess | None = None

    # -- what a broker says about itself -------------------------------------------------------

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """The command line for the current port."""

    @abc.abstractmethod
    async def _wait_ready(self) -> None:
        """Return once the broker answers its protocol; raise when it does not in time."""

    @property
    @abc.abstractmethod
    def _output_path(self) -> Path:
        """Where the process's stdout and stderr go."""

    def _log_paths(self) -> tuple[Path, ...]:
        """The files whose tails explain a failed start."""
        return (self._output_path,)

    def _env(self) -> Mapping[str, str] | None:
        """The child's environment (None: inherit)."""
        return None

    def _prepare(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Before each spawn, e.g. render a config for the current port."""

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """True while the broker process runs."""
        return self._process is not None and self._process.returncode is None

    def _require_port(self) -> int:
        if not self.port:
            raise BrokerLaunchError(f"{self.name} has no port yet: start it first")
        return self.port

    async def start(self) -> None:
        """Start the broker and return once its readiness probe answers."""
        if self.running:
            raise BrokerLaunchError(f"{self.name} already running on port {self.port}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Only the first start may move to another free port: a port picked once is kept, as
        # a restart must come back where clients (and their persistent sessions) expect it.
        attempts = _AUTO_PORT_ATTEMPTS if self._auto_port and not self.port else 1
        for attempt in range(1, attempts + 1):
            if not self.port or attempt > 1:
                self.port = free_port()
            try:
                await self._start_once()
                return
            except NotStarted as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "%s did not start on port %d, trying another: %s", self.name, self.port, exc
                )

    async def _start_once(self) -> None:
        self._prepare()
        process = BrokerProcess(
            self.name, self._argv(), self._output_path, self.run_dir, env=self._env()
        )
        self._process = process
        await process.spawn(self.start_timeout_s)
        ready = asyncio.ensure_future(self._wait_ready())
        exited = asyncio.ensure_future(process.wait_exit())
        try:
            done, _ = await asyncio.wait(
                {ready, exited},
                timeout=self.start_timeout_s + 1.0,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ready in done and ready.exception() is None:
                log.info("%s ready on 127.0.0.1:%d (pid %s)", self.name, self.port, process.pid)
                return
            if exited in done:
                why = f"exited with status {exited.result()} before it was ready"
            elif ready in done:
                why = f"not ready: {ready.exception()!r}"
            else:
                why = f"not ready after {self.start_timeout_s:.1f}s"
        finally:
            for task in (ready, exited):
                task.cancel()
            for task in (ready, exited):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await process.stop(self.stop_timeout_s)
        raise NotStarted(
            f"{self.name} on 127.0.0.1:{self.port} {why}\n{log_tail(*self._log_paths())}"
        )

    async def stop(self) -> None:
        """SIGTERM the broker (SIGKILL after `stop_timeout_s`) and wait for it."""
        if self._process is not None:
            await self._process.stop(self.stop_timeout_s)
        self._process = None

    async def restart(self) -> None:
        """Stop, then start again on the same port and run directory."""
        await self.stop()
        await self.start()

    async def wait_exited(self) -> int:
        """Wait until the running broker process exits; its exit status."""
        if self._process is None:
            raise BrokerLaunchError(f"{self.name} is not running")
        return await self._process.wait_exit()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
