"""`LocalBrokers`: Tansu (Kafka API) + Mosquitto on loopback, with the topics of a namespace
created, as one async context manager. Used by `fedmoe brokers up|smoke`, the demo and the
integration-test fixtures.

    async with LocalBrokers(LocalBrokerSettings(namespace="demo")) as brokers:
        brokers.kafka_bootstrap          # "127.0.0.1:PORT"
        brokers.mqtt_url                 # "mqtt://127.0.0.1:PORT"
        await brokers.create_namespace("t-other")
        settings = brokers.broker_settings("t-other")
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
from brokers.settings import BrokerSettings, LocalBrokerSettings
from brokers.tansu import TansuBroker
from schemas.topics import TopicTable

log = logging.getLogger(__name__)


class LocalBrokers:
    """Both local brokers plus the topics of `settings.namespace`."""

    def __init__(self, settings: LocalBrokerSettings | None = None) -> None:
        self.settings = settings if settings is not None else LocalBrokerSettings()
        self._temp_dir: Path | None = None
        self.run_dir: Path | None = Path(self.settings.run_dir) if self.settings.run_dir else None
        self.tansu: TansuBroker | None = None
        self.mosquitto: MosquittoBroker | None = None
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
        return {
            "FEDMOE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "FEDMOE_MQTT_URL": self.mqtt_url,
            "FEDMOE_NAMESPACE": self.settings.namespace,
        }

    def broker_settings(self, namespace: str | None = None, **overrides: Any) -> BrokerSettings:
        """`BrokerSettings` pointing at these brokers (and `namespace`, default the started one)."""
        base = BrokerSettings(
            kafka_bootstrap=self.kafka_bootstrap,
            mqtt_url=self.mqtt_url,
            namespace=namespace or self.settings.namespace,
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

    async def start(self) -> None:
        """Start Tansu and Mosquitto side by side, then create the namespace's topics."""
        if self.run_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="fedmoe-brokers-"))
            self.run_dir = self._temp_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tansu = TansuBroker.from_settings(self.settings, self.run_dir)
        self.mosquitto = MosquittoBroker.from_settings(self.settings, self.run_dir)
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
