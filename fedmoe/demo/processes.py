"""`ProcessGroup`: the demo's child processes (services, fleet), started and always reaped.

Each child is a real OS process (`fedmoe service <name>`, `fedmoe fleet`) with its output in
its own log file. On exit the group sends SIGTERM to every child still running (the caller
stops the fleet first with `stop`, so it can say goodbye to services that still run), waits up
to a timeout, then SIGKILLs what is left, so no process outlives the demo. On Linux each child
also gets PR_SET_PDEATHSIG, so even a SIGKILLed demo takes its children with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from brokers._process import pdeathsig_preexec
from fedmoe.errors import FedMoEError

log = logging.getLogger(__name__)


class ChildProcessFailed(FedMoEError):
    """A child process of the demo exited while it should have been running."""


@dataclass
class Child:
    """One started child."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.process.pid


class ProcessGroup:
    """Async context manager owning the demo's children."""

    def __init__(self, log_dir: Path, *, stop_timeout_s: float = 20.0) -> None:
        self._log_dir = log_dir
        self._stop_timeout_s = stop_timeout_s
        self._children: list[Child] = []

    @property
    def pids(self) -> dict[str, int]:
        """Child name → pid, in start order."""
        return {c.name: c.pid for c in self._children}

    def child(self, name: str) -> Child:
        """The child started as `name` (its latest start). KeyError when there is none."""
        for c in self._children:
            if c.name == name:
                return c
        raise KeyError(name)

    async def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start `argv` as child `name`, its stdout and stderr to `<log_dir>/<name>.log`.

        A name whose child has exited may be started again (a supervisor's restart): the new
        child replaces it and its output is appended to the same log."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{name}.log"
        old = next((c for c in self._children if c.name == name), None)
        if old is not None:
            if old.process.returncode is None:
                raise ChildProcessFailed(f"{name} (pid {old.pid}) is still running")
            old.log_file.close()
            self._children.remove(old)
        log_file = log_path.open("ab" if old is not None else "wb")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=pdeathsig_preexec(),
            )
        except OSError as exc:
            log_file.close()
            raise ChildProcessFailed(f"{name}: cannot start {argv[0]}: {exc}") from exc
        child = Child(name, process, log_path, log_file)
        self._children.append(child)
        return child

    def check_running(self) -> None:
        """Raise `ChildProcessFailed` when a child has exited (with its log's last lines)."""
        for child in self._children:
            code = child.process.returncode
            if code is not None:
                raise ChildProcessFailed(
                    f"{child.name} (pid {child.pid}) exited with {code}; "
                    f"last lines of {child.log_path}:\n{tail(child.log_path)}"
                )

    async def stop(self, name: str, *, timeout_s: float | None = None) -> int | None:
        """SIGTERM one child and wait for it (SIGKILL after the timeout); its exit code."""
        child = next(c for c in self._children if c.name == name)
        return await self._stop(child, timeout_s or self._stop_timeout_s)

    async def _stop(self, child: Child, timeout_s: float) -> int | None:
        process = child.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await process.wait()
            except TimeoutError:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", child.name, child.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await process.wait()
        child.log_file.close()
        return process.returncode

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        children = list(reversed(self._children))
        self._children = []
        await asyncio.gather(*(self._stop(c, self._stop_timeout_s) for c in children))


def tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a text file ("" when unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def fedmoe_argv(*args: str) -> list[str]:
    """argv that runs `fedmoe <args>` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "fedmoe", *args]


def child_env(base: Mapping[str, str], *overlays: Mapping[str, str]) -> dict[str, str]:
    """`base` (usually os.environ) with `overlays` applied in order."""
    env = dict(base)
    for overlay in overlays:
        env.update(overlay)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def alive(pid: int) -> bool:
    """Whether a process with `pid` exists (a zombie counts: reap your children first)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
