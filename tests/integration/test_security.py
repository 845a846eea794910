"""Broker security against a real Mosquitto with the project's auth config (brokers/registry.py):
anonymous and wrong-secret clients are refused; a device's publishes outside its own uplink are
answered "not authorized" (MQTT 5 PUBACK 0x87) and change nothing; a revoked device is cut and
refused while the others keep working behind the real gateway; TLS needs the deployment's CA.

Each test runs its own Mosquitto (its own registry, MQTT root = the test's namespace); Kafka is
the session's Tansu.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ssl
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio
from aiomqtt.exceptions import MqttConnectError

from brokers.errors import BrokerError
from brokers.local import LocalBrokers
from brokers.mosquitto import MosquittoBroker
from brokers.mqtt import mqtt_client
from brokers.registry import DeviceRegistry, write_secrets_file
from brokers.settings import BrokerSettings
from brokers.tls import create_certificates
from clients.fleet import Fleet
from clients.stats import Event
from moe.parts import SHARED, part_ids
from moe.scenario import build_scenario, device_id
from schemas import Assignment, PartUpdate, PartVersion, RoundClosed, encode
from schemas.topics import MqttTopic, Topic
from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings
from services.metrics import Outcome
from services.runtime import RuntimeSettings
from tests.integration.programs.harness import TopicCollector, produce
from tests.integration.test_fleet import SCENARIO, fleet_settings, running, until

NOT_AUTHORIZED = 0x87
TIMEOUT_S = 10.0


@dataclasses.dataclass
class SecureMqtt:
    broker: MosquittoBroker
    registry: DeviceRegistry
    settings: BrokerSettings  # Kafka of the session, this Mosquitto, root = namespace


@pytest_asyncio.fixture
async def secure(
    local_brokers: LocalBrokers, broker_env: BrokerSettings, tmp_path: Path
) -> AsyncIterator[SecureMqtt]:
    root = broker_env.namespace
    registry = DeviceRegistry.create(tmp_path / "registry", root)
    broker = MosquittoBroker(tmp_path / "mosquitto", registry=registry)
    async with broker:
        settings = dataclasses.replace(broker_env, mqtt_url=broker.url, mqtt_root=root)
        yield SecureMqtt(broker, registry, settings)


class Client:
    """An aiomqtt client that records the reason code of every PUBACK it gets."""

    def __init__(self, settings: BrokerSettings, user: str | None, secret: str | None) -> None:
        self.refused: list[int] = []
        self.client = mqtt_client(
            settings,
            client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:6]}",
            persistent=False,
            username=user,
            password=secret,
            on_refused=lambda mid, code: self.refused.append(code),
        )
        self.received: list[tuple[str, bytes, bool]] = []
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Client:
        await asyncio.wait_for(self.client.__aenter__(), TIMEOUT_S)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for m in self.client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            async with self._changed:
                self.received.append((m.topic.value, payload, m.retain))
                self._changed.notify_all()

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await asyncio.wait_for(self.client.__aexit__(None, None, None), TIMEOUT_S)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish QoS 1; the number of refusals so far after the PUBACK arrived."""
        await self.client.publish(topic, payload, qos=1, retain=retain, timeout=TIMEOUT_S)
        return len(self.refused)

    async def subscribe(self, topic_filter: str) -> None:
        await self.client.subscribe(topic_filter, 1, timeout=TIMEOUT_S)

    async def wait_for(self, topic: str, payload: bytes) -> None:
        async with asyncio.timeout(TIMEOUT_S), self._changed:
            await self._changed.wait_for(
                lambda: (topic, payload) in [(t, p) for t, p, _ in self.received]
            )


async def _refused_at_connect(
    settings: BrokerSettings, user: str | None, secret: str | None
) -> int:
    client = mqtt_client(
        settings, client_id=f"x-{uuid.uuid4().hex[:6]}", username=user, password=secret
    )
    with pytest.raises(MqttConnectError) as info:
        await asyncio.wait_for(client.__aenter__(), TIMEOUT_S)
    value = getattr(info.value.rc, "value", info.value.rc)
    assert isinstance(value, int)
    return value


@pytest.mark.timeout(60)
async def test_anonymous_and_wrong_secrets_are_refused(secure: SecureMqtt) -> None:
    secrets = secure.registry.add(["dev-a"])
    await secure.broker.reload()
    assert await _refused_at_connect(secure.settings, None, None) in (0x86, 0x87)
    assert await _refused_at_connect(secure.settings, "dev-a", "wrong") in (0x86, 0x87)
    assert await _refused_at_connect(secure.settings, "nobody", secrets["dev-a"]) in (0x86, 0x87)
    async with Client(secure.settings, "dev-a", secrets["dev-a"]) as device:
        assert await device.publish(f"{secure.settings.mqtt_root}/dev-a/telemetry", b"t") == 0


@pytest.mark.timeout(60)
async def test_a_device_can_touch_only_its_own_topics(secure: SecureMqtt) -> None:
    root = secure.settings.mqtt_root
    secrets = {
        **secure.registry.add(["gw"], role="gateway"),
        **secure.registry.add(["rec"], role="observer"),
        **secure.registry.add(["rep"], role="replayer"),
        **secure.registry.add(["dev-a", "dev-b", "dev-c"]),
    }
    assert await secure.broker.reload()
    s = secure.settings
    async with (
        Client(s, "gw", secrets["gw"]) as gateway,
        Client(s, "rec", secrets["rec"]) as observer,
        Client(s, "dev-a", secrets["dev-a"]) as attacker,
        Client(s, "dev-b", secrets["dev-b"]) as victim,
        Client(s, "rep", secrets["rep"]) as replayer,
    ):
        await gateway.subscribe(f"$share/gateway/{root}/+/update")
        await observer.subscribe(f"{root}/#")
        for f in (f"{root}/dev-b/#", f"{root}/model/#", f"{root}/gate/#", f"{root}/round"):
            await victim.subscribe(f)
        # Broader filters are granted by Mosquitto 2.0 but deliver only what the ACL lets
        # this account read (checked per message).
        await attacker.subscribe(f"{root}/#")
        await gateway.publish(f"{root}/round", b"legit-round", retain=True)
        await gateway.publish(f"{root}/model/{SHARED}", b"legit-model", retain=True)
        await victim.wait_for(f"{root}/round", b"legit-round")

        forged = [
            (f"{root}/dev-b/update", False),  # another device's update
            (f"{root}/dev-b/telemetry", False),
            (f"{root}/model/{SHARED}", True),  # the retained model every device trusts
            (f"{root}/gate/expert-0", True),
            (f"{root}/round", True),
            (f"{root}/dev-b/assignment", False),  # only the gateway assigns
            (f"{root}/dev-b/ack", False),
        ]
        for n, (topic, retain) in enumerate(forged, start=1):
            assert await attacker.publish(topic, b"forged", retain=retain) == n, topic
        assert set(attacker.refused) == {NOT_AUTHORIZED}
        # Its own uplink still works, and the observer (read-only) may publish nothing.
        assert await attacker.publish(f"{root}/dev-a/update", b"own-update") == len(forged)
        await gateway.wait_for(f"{root}/dev-a/update", b"own-update")
        assert await observer.publish(f"{root}/dev-a/telemetry", b"x") == 1
        assert await observer.publish(f"{root}/rec/telemetry", b"x") == 2
        # A replayer may publish any device's uplink, nothing else.
        assert await replayer.publish(f"{root}/dev-b/update", b"replayed") == 0
        assert await replayer.publish(f"{root}/round", b"x", retain=True) == 1
        await gateway.wait_for(f"{root}/dev-b/update", b"replayed")
        await victim.publish(f"{root}/dev-b/telemetry", b"victim-telemetry")
        await observer.wait_for(f"{root}/dev-b/telemetry", b"victim-telemetry")
        # Everything published so far has been delivered (per-topic order; one more hop).
        await victim.publish(f"{root}/dev-b/telemetry", b"fence")
        await observer.wait_for(f"{root}/dev-b/telemetry", b"fence")

    assert not [m for m in gateway.received if m[1] in (b"forged", b"x")]
    assert not [m for m in victim.received if m[1] in (b"forged", b"x")]
    assert not [m for m in observer.received if m[1] in (b"forged", b"x")]
    # The attacker's wide subscription got nothing of dev-b's topics.
    assert not [t for t, _, _ in attacker.received if t.startswith(f"{root}/dev-b/")]
    # A device connecting now sees the gateway's retained state, not the forgeries.
    async with Client(s, "dev-c", secrets["dev-c"]) as late:
        await late.subscribe(f"{root}/round")
        await late.subscribe(f"{root}/model/#")
        await late.subscribe(f"{root}/gate/#")
        await late.wait_for(f"{root}/round", b"legit-round")
        await late.wait_for(f"{root}/model/{SHARED}", b"legit-model")
    assert {(t, p) for t, p, _ in late.received} == {
        (f"{root}/round", b"legit-round"),
        (f"{root}/model/{SHARED}", b"legit-model"),
    }


def _model_records(now: float) -> tuple[list[tuple[bytes, bytes]], dict[str, int], RoundClosed]:
    scenario = build_scenario(SCENARIO.config())
    versions = dict.fromkeys(part_ids(scenario.model), 0)
    model = [
        (part.encode(), encode(PartVersion(
            message_id=f"pv-{part}", device_id="aggregator", round=0, timestamp=now, part=part,
            version=0, layout_version=1, tensors=tensors,
        )))
        for part, tensors in scenario.initial_parts().items()
    ]  # fmt: skip
    closed = RoundClosed(
        message_id="rc-0", device_id="matcher", round=0, timestamp=now, reason="complete",
        parts_closed=len(versions), model_versions=versions,
    )  # fmt: skip
    return model, versions, closed


@pytest.mark.timeout(110)
async def test_a_revoked_device_is_cut_and_refused_while_the_others_keep_training(
    secure: SecureMqtt, namespace: str, tmp_path: Path
) -> None:
    s = secure.settings
    table = s.topic_table()
    indices = range(2, 6)  # devices 3, 4, 5 are online in round 1, device 2 is not
    gw_secret = secure.registry.add([f"gw-{namespace}"], role="gateway")
    device_secrets = secure.registry.add([device_id(i) for i in indices])
    secrets_file = tmp_path / "fleet-secrets.json"
    write_secrets_file(secrets_file, device_secrets)
    assert await secure.broker.reload()
    gateway_broker = dataclasses.replace(
        s, mqtt_username=f"gw-{namespace}", mqtt_password=gw_secret[f"gw-{namespace}"]
    )
    fleet = Fleet(
        s,
        fleet_settings(namespace, first=2, count=4, secrets_file=str(secrets_file)),
        SCENARIO,
    )
    revoked, keeps = device_id(4), device_id(3)
    attacker = next(a for a in fleet.agents if a.device == device_id(5))
    model, versions, closed = _model_records(time.time())
    runtime = RuntimeSettings(poll_timeout_s=0.2, session_timeout_s=6.0, drain_timeout_s=10.0)
    gateway_settings = GatewaySettings(client_id=f"gw-{namespace}", group_id="gw-egress")
    async with (
        TopicCollector(s, table.name(Topic.UPDATES)) as updates,
        TopicCollector(s, table.name(Topic.DEAD_LETTER)) as letters,
        Gateway(gateway_broker, gateway_settings, runtime) as gateway,
        running(fleet),
    ):
        await until(lambda: gateway.connected.is_set(), 30, "gateway connected")
        await produce(s, table.name(Topic.MODEL), model)
        await produce(s, table.name(Topic.ROUNDS), [(b"round", encode(closed))])
        agents = {a.device: a for a in fleet.agents}
        await until(lambda: all(a.connected for a in agents.values()), 30, "every device up")

        # A registered device forging another's update: refused by the broker, never seen by
        # the gateway (no record, no dead letter).
        async with Client(s, attacker.device, device_secrets[attacker.device]) as forger:
            assert await forger.publish(table.mqtt(MqttTopic.UPDATE, device=keeps), b"x") == 1

        secure.registry.revoke([revoked])
        cut_at = time.monotonic()
        assert await secure.broker.reload()
        await until(lambda: not agents[revoked].connected, 10, "the revoked device cut")
        cut_s = time.monotonic() - cut_at
        await until(
            lambda: agents[revoked].stats.events[Event.REFUSED.value] == 1,
            20,
            "the revoked device refused at its next connect",
        )
        # The others keep training: an assignment to device 3 yields its update on Kafka.
        assignment = Assignment(
            message_id="as-3", device_id=keeps, round=1, timestamp=time.time(), experts=(1,),
            deadline=time.time() + 30, model_versions=versions,
        )  # fmt: skip
        await produce(s, table.name(Topic.ASSIGNMENTS), [(keeps.encode(), encode(assignment))])
        await updates.wait_until(
            lambda ms: (
                {m.payload.part for m in ms if isinstance(m, PartUpdate)} >= {SHARED, "expert-1"}
            ),
            40,
            "device 3's update after the revocation",
        )
        assert all(agents[d].connected for d in (device_id(3), device_id(5)))
        assert not agents[revoked].connected
        gateway.stop()
    assert {m.device_id for m in updates.messages if isinstance(m, PartUpdate)} == {keeps}
    assert not letters.messages
    assert gateway.metrics.get(Outcome.DEAD_LETTERED) == 0
    print(f"revoked device cut {cut_s:.3f}s after SIGHUP")
    assert cut_s < 5.0


@pytest.mark.timeout(60)
async def test_tls_needs_the_ca(tmp_path: Path, broker_env: BrokerSettings) -> None:
    tls = create_certificates(tmp_path / "certs", ["localhost", "127.0.0.1"])
    registry = DeviceRegistry.create(tmp_path / "registry", broker_env.namespace)
    secret = registry.add(["dev-t"])["dev-t"]
    async with MosquittoBroker(tmp_path / "mosquitto", registry=registry, tls=tls) as broker:
        assert broker.url.startswith("mqtts://")
        with_ca = dataclasses.replace(
            broker_env,
            mqtt_url=broker.url,
            mqtt_root=broker_env.namespace,
            mqtt_ca_file=str(tls.ca_file),
        )
        async with Client(with_ca, "dev-t", secret) as device:
            assert await device.publish(f"{broker_env.namespace}/dev-t/telemetry", b"t") == 0
        # Without the CA (the system's trust store does not know it) the handshake fails.
        without = dataclasses.replace(with_ca, mqtt_ca_file="")
        client = mqtt_client(without, client_id="no-ca", username="dev-t", password=secret)
        with warnings.catch_warnings():
            # paho drops the socket whose handshake failed without closing it: collected here.
            warnings.simplefilter("ignore", ResourceWarning)
            with pytest.raises((aiomqtt.MqttError, ssl.SSLError, OSError)):
                await asyncio.wait_for(client.__aenter__(), TIMEOUT_S)
            del client
            gc.collect()
        # Nor does plain MQTT reach the TLS listener.
        plain = dataclasses.replace(with_ca, mqtt_url=broker.url.replace("mqtts://", "mqtt://"))
        client = mqtt_client(plain, client_id="plain", username="dev-t", password=secret)
        with pytest.raises((aiomqtt.MqttError, OSError, TimeoutError, BrokerError)):
            await asyncio.wait_for(client.__aenter__(), TIMEOUT_S)
