"""One local broker process: spawn in its own process group, log to a file, stop with
SIGTERM then SIGKILL. Shared by the Tansu and Mosquitto launchers.

A child also gets SIGTERM when the process that started it dies (Linux `PR_SET_PDEATHSIG`),
so a killed `fedmoe brokers up` or test session leaves no broker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from brokers.errors import BrokerLaunchError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class NotStarted(BrokerLaunchError):
    """The broker process exited or never became ready (maybe its port was taken)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(*paths: Path, lines: int = 30) -> str:
    """The last `lines` lines of each existing log file, for error messages."""
    out: list[str] = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        tail = text.splitlines()[-lines:]
        if tail:
            out.append(f"--- {path.name} (last {len(tail)} lines) ---")
            out.extend(tail)
    return "\n".join(out) if out else "(no log output)"


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        prctl = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class BrokerProcess:
    """A started broker subprocess with its log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cwd: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = None if env is None else dict(env)
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it is running (also the process group id)."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited, else None."""
        return None if self._proc is None else self._proc.returncode

    async def spawn(self, timeout_s: float) -> None:
        """Start the process in its own session / process group, output to the log file."""
        if self._proc is not None and self._proc.returncode is None:
            raise BrokerLaunchError(f"{self.name} is already running (pid {self._proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            try:
                async with asyncio.timeout(timeout_s):
                    self._proc = await asyncio.create_subprocess_exec(
                        *self.argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=out,
                        stderr=asyncio.subprocess.STDOUT,
                        cwd=self.cwd,
                        env=self.env,
                        start_new_session=True,
                        preexec_fn=pdeathsig_preexec(),
                    )
            except (OSError, TimeoutError) as exc:
                raise BrokerLaunchError(
                    f"cannot start {self.name} ({self.argv[0]}): {exc}"
                ) from exc
        log.info("%s started, pid %d: %s", self.name, self._proc.pid, " ".join(self.argv))

    async def wait_exit(self) -> int:
        """Wait until the process exits (no timeout: callers race it against readiness)."""
        if self._proc is None:
            raise BrokerLaunchError(f"{self.name} was never started")
        return await self._proc.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def stop(self, timeout_s: float) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout_s`; return the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                log.warning("%s did not exit %.1fs after SIGTERM: SIGKILL", self.name, timeout_s)
                self._signal_group(signal.SIGKILL)
                try:
                    async with asyncio.timeout(timeout_s):
                        await proc.wait()
                except TimeoutError as exc:
                    raise BrokerLaunchError(
                        f"{self.name} (pid {proc.pid}) survived SIGKILL for {timeout_s}s"
                    ) from exc
        log.info("%s stopped (exit status %s)", self.name, proc.returncode)
        return proc.returncode
