"""Integration fixtures: one Tansu + one Mosquitto for the whole test session.

- `local_brokers` (session): the running `LocalBrokers` (run dir under pytest's tmp dir).
- `broker_env` (function): creates the Kafka topics of the test's unique `namespace` and
  returns a `BrokerSettings` pointing at the brokers and that namespace.

Every test under tests/integration is marked `integration` by `pytest_collection_modifyitems`.
Other suites (e2e) may reuse these fixtures with
`from tests.integration.conftest import broker_env, local_brokers  # noqa: F401`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from brokers.errors import BrokerLaunchError
from brokers.local import LocalBrokers
from brokers.mosquitto import find_mosquitto
from brokers.settings import BrokerSettings, LocalBrokerSettings
from brokers.tansu import find_tansu

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder `integration`."""
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def _local_settings(run_dir: Path) -> LocalBrokerSettings:
    # Only the binaries come from the environment: ports stay free ones picked per session.
    # The shared broker takes anonymous clients: these tests exercise the services, and each
    # names its own MQTT root. Auth and ACLs are tested against brokers of their own
    # (test_security.py), the demo runs with them on (tests/e2e).
    return LocalBrokerSettings(
        mqtt_insecure=True,
        run_dir=str(run_dir),
        start_timeout_s=60.0,
        mosquitto_bin=os.environ.get("FEDMOE_MOSQUITTO_BIN", ""),
        tansu_bin=os.environ.get("FEDMOE_TANSU_BIN", ""),
    )


def _require_binaries(settings: LocalBrokerSettings) -> None:
    problem = ""
    try:
        find_mosquitto(settings.mosquitto_bin)
        find_tansu(settings.tansu_bin)
    except BrokerLaunchError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(f"integration tests need local brokers: {problem}", pytrace=False)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def local_brokers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalBrokers]:
    """Tansu + Mosquitto on free loopback ports for the whole session."""
    settings = _local_settings(tmp_path_factory.mktemp("brokers"))
    _require_binaries(settings)
    brokers = LocalBrokers(settings)
    problem = ""
    try:
        await brokers.start()
    except BrokerLaunchError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(f"local brokers did not start: {problem}", pytrace=False)
    try:
        yield brokers
    finally:
        await brokers.stop()


@pytest_asyncio.fixture
async def broker_env(local_brokers: LocalBrokers, namespace: str) -> BrokerSettings:
    """`BrokerSettings` for this test's own namespace, its Kafka topics created."""
    await local_brokers.create_namespace(namespace)
    return local_brokers.broker_settings(namespace)
