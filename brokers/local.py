"""`LocalBrokers`: Tansu (Kafka API) + Mosquitto on loopback, with the topics of a namespace
created, as one async context manager. Used by `fedmoe brokers up|smoke`, the demo and the
integration-test fixtures.

    async with LocalBrokers(LocalBrokerSettings(namespace="demo")) as brokers:
        brokers.kafka_bootstrap          # "127.0.0.1:PORT"
        brokers.mqtt_url                 # "mqtt://127.0.0.1:PORT"
        await brokers.create_namespace("t-other")
        settings = brokers.broker_settings("t-other")

Mosquitto authenticates every client against a device registry (`brokers.registry`; at
`device_registry`, else `RUN_DIR/registry`, created empty for `mqtt_root`) unless
`mqtt_insecure`; with `mqtt_tls` it listens with TLS only, with certificates from
`certs_dir` (else `RUN_DIR/certs`), created when missing. `broker_settings()` then carries the
CA file but no credentials: each client adds its own account.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from brokers.admin import TopicsReport, create_topics
from brokers.errors import BrokerLaunchError
from brokers.mosquitto import MosquittoBroker
from brokers.registry import DeviceRegistry
from brokers.settings import BrokerSettings, LocalBrokerSettings
from brokers.tansu import TansuBroker
from brokers.tls import DEFAULT_HOSTS, TlsFiles, create_certificates
from schemas.topics import TopicTable

log = logging.getLogger(__name__)

INSECURE_WARNING = (
    "*** WARNING: MQTT AUTH IS OFF (insecure mode). Any client that reaches Mosquitto may "
    "publish as any device and overwrite the retained model and round. Debugging only. ***"
)


class LocalBrokers:
    """Both local brokers plus the topics of `settings.namespace`."""

    def __init__(self, settings: LocalBrokerSettings | None = None) -> None:
        self.settings = settings if settings is not None else LocalBrokerSettings()
        self._temp_dir: Path | None = None
        self.run_dir: Path | None = Path(self.settings.run_dir) if self.settings.run_dir else None
        self.tansu: TansuBroker | None = None
        self.mosquitto: MosquittoBroker | None = None
        self.registry: DeviceRegistry | None = None  # None: --insecure, anonymous clients
        self.tls: TlsFiles | None = None
        self.topics: dict[str, TopicsReport] = {}  # namespace -> what creation did

    @property
    def kafka_bootstrap(self) -> str:
        """Tansu's bootstrap address, "127.0.0.1:PORT"."""
        if self.tansu is None:
            raise BrokerLaunchError("LocalBrokers not started")
        return self.tansu.bootstrap

    @property
    def mqtt_url(self) -> str:
        """Mosquitto's URL, "mqtt://127.0.0.1:PORT"."""
        if self.mosquitto is None:
            raise BrokerLaunchError("LocalBrokers not started")
        return self.mosquitto.url

    @property
    def namespace(self) -> str:
        """The namespace whose topics were created at start."""
        return self.settings.namespace

    def env(self) -> dict[str, str]:
        """The environment a service needs to use these brokers."""
        env = {
            "FEDMOE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "FEDMOE_MQTT_URL": self.mqtt_url,
            "FEDMOE_NAMESPACE": self.settings.namespace,
        }
        if self.tls is not None:
            env["FEDMOE_MQTT_CA_FILE"] = str(self.tls.ca_file)
        return env

    def broker_settings(self, namespace: str | None = None, **overrides: Any) -> BrokerSettings:
        """`BrokerSettings` pointing at these brokers (and `namespace`, default the started one)."""
        base = BrokerSettings(
            kafka_bootstrap=self.kafka_bootstrap,
            mqtt_url=self.mqtt_url,
            namespace=namespace or self.settings.namespace,
            mqtt_ca_file="" if self.tls is None else str(self.tls.ca_file),
        )
        return dataclasses.replace(base, **overrides) if overrides else base

    async def create_namespace(self, namespace: str, *, timeout_s: float = 30.0) -> TopicsReport:
        """Create every Kafka topic of `namespace` (idempotent)."""
        report = await create_topics(
            self.kafka_bootstrap, TopicTable(namespace=namespace), timeout_s
        )
        if report.configs_dropped:
            log.warning(
                "namespace %s: topic configs refused: %s", namespace, report.configs_dropped
            )
        self.topics[namespace] = report
        return report

    def _prepare_security(self, run_dir: Path) -> None:
        """The registry (unless insecure) and the TLS files (with TLS), created if absent."""
        settings = self.settings
        if not settings.mqtt_insecure:
            path = Path(settings.device_registry or run_dir / "registry")
            self.registry = DeviceRegistry.create(path.absolute(), settings.mqtt_root)
        else:
            log.warning(INSECURE_WARNING)
        if settings.mqtt_tls:
            certs = Path(settings.certs_dir or run_dir / "certs").absolute()
            existing = TlsFiles.in_dir(certs)
            present = all(
                p.exists() for p in (existing.ca_file, existing.cert_file, existing.key_file)
            )
            self.tls = existing if present else create_certificates(certs, DEFAULT_HOSTS)

    async def start(self) -> None:
        """Start Tansu and Mosquitto side by side, then create the namespace's topics."""
        if self.run_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="fedmoe-brokers-"))
            self.run_dir = self._temp_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_security(self.run_dir)
        self.tansu = TansuBroker.from_settings(self.settings, self.run_dir)
        self.mosquitto = MosquittoBroker.from_settings(
            self.settings, self.run_dir, registry=self.registry, tls=self.tls
        )
        try:
            results = await asyncio.gather(
                self.tansu.start(), self.mosquitto.start(), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            await self.create_namespace(
                self.settings.namespace, timeout_s=self.settings.start_timeout_s
            )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop both brokers (each SIGTERM then SIGKILL); remove a temporary run dir."""
        errors: list[BaseException] = []
        for broker in (self.mosquitto, self.tansu):
            if broker is None:
                continue
            try:
                await broker.stop()
            except Exception as exc:  # stop the other one anyway
                errors.append(exc)
        if self._temp_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._temp_dir)
            self._temp_dir = None
            self.run_dir = None
        if errors:
            raise errors[0]

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
