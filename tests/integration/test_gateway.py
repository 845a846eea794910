"""The gateway against real Mosquitto and Tansu: no update lost across a SIGKILL (manual
PUBACK + persistent session), hostile input dead-lettered, Kafka → MQTT delivery and the
retained model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from brokers._process import free_port
from brokers.kafka import KafkaProducer, RecordAck
from brokers.mqtt import MqttSession, mqtt_client
from brokers.settings import BrokerSettings
from fedmoe.soak.watch import http_get
from schemas import (
    Assignment,
    DeadLetter,
    DeviceStatus,
    Message,
    ModelUpdate,
    PartPayload,
    PartUpdate,
    PartVersion,
    Telemetry,
    decode,
    encode,
)
from schemas.topics import MqttTopic, Topic
from services.gateway.app import Gateway, Ingress
from services.gateway.logic import subscriptions
from services.gateway.settings import GatewaySettings
from services.metrics import Outcome, ServiceMetrics
from services.runtime import Backoff, RuntimeSettings
from tests.integration.programs.harness import (
    ServiceProcess,
    TopicCollector,
    broker_environ,
    produce,
)

N_UPDATES = 500


@pytest.fixture
def broker(broker_env: BrokerSettings) -> BrokerSettings:
    """The test's brokers with an MQTT root of its own: persistent gateway sessions of earlier
    tests (same share group) must not take a share of this test's messages."""
    return dataclasses.replace(broker_env, mqtt_root=broker_env.namespace)


def _update(i: int, device: str = "dev-1") -> ModelUpdate:
    parts = tuple(
        PartPayload(
            part=name,
            base_version=0,
            weight=1.0,
            loss=0.5,
            tensors={"w": np.full((2, 2), i, dtype=np.float32)},
        )
        for name in ("shared", f"expert-{i % 4}")
    )
    return ModelUpdate(
        message_id=f"u-{i}",
        device_id=device,
        round=1,
        timestamp=float(i),
        num_samples=8,
        train_seconds=0.1,
        parts=parts,
    )


@asynccontextmanager
async def _device(broker: BrokerSettings, client_id: str) -> AsyncIterator[aiomqtt.Client]:
    async with mqtt_client(broker, client_id=client_id, persistent=True) as client:
        yield client


async def _wait_ready(
    broker: BrokerSettings, device: aiomqtt.Client, telemetry: TopicCollector, timeout_s: float
) -> None:
    """Publish status probes until one reaches Kafka: the gateway is subscribed and working
    (before it subscribed, the broker had nobody to queue the device's messages for)."""
    table = broker.topic_table()
    async with asyncio.timeout(timeout_s):
        for n in range(10**6):
            probe = DeviceStatus(
                message_id=f"probe-{n}", device_id="dev-1", round=0, timestamp=1.0, online=True
            )
            topic = table.mqtt(MqttTopic.STATUS, device="dev-1")
            await device.publish(topic, encode(probe), qos=1)
            try:
                await telemetry.wait_until(
                    lambda ms, mid=probe.message_id: any(m.message_id == mid for m in ms),
                    0.5,
                    "probe",
                )
            except AssertionError:
                continue
            return


def _metrics(log_text: str) -> dict[str, object]:
    lines = re.findall(r"metrics (\{.*\})", log_text)
    return dict(json.loads(lines[-1])) if lines else {}


@pytest.mark.timeout(180)
async def test_sigkill_mid_stream_loses_no_update(broker: BrokerSettings, tmp_path: Path) -> None:
    table = broker.topic_table()
    env = broker_environ(
        broker,
        FEDMOE_GATEWAY_CLIENT_ID=f"gw-{broker.namespace}",
        FEDMOE_GATEWAY_GROUP_ID=f"gw-{broker.namespace}",
        # One device stands in for a fleet's burst here: no per-device rate limit.
        FEDMOE_GATEWAY_RATE_PER_S="0",
        FEDMOE_RUNTIME_SESSION_TIMEOUT_S="6",
        FEDMOE_RUNTIME_METRICS_INTERVAL_S="2",
    )
    gateway = ServiceProcess(["-m", "fedmoe.cli", "service", "gateway"], env, tmp_path / "gw.log")
    update_topic = table.mqtt(MqttTopic.UPDATE, device="dev-1")

    def distinct_updates(ms: list[Message]) -> set[str]:
        return {m.update_id for m in ms if isinstance(m, PartUpdate)}

    async with (
        TopicCollector(broker, table.name(Topic.UPDATES)) as updates,
        TopicCollector(broker, table.name(Topic.TELEMETRY)) as telemetry,
        _device(broker, f"dev-{broker.namespace}") as device,
    ):
        try:
            await gateway.start()
            await _wait_ready(broker, device, telemetry, 60)

            at_kill_point = asyncio.Event()

            async def publish_all() -> None:
                # A device's pace for 30%, then a burst; the test kills the gateway when the
                # device has published 60%: the gateway is behind, its window of unacknowledged
                # messages full, and at most 60% can have reached Kafka.
                for i in range(N_UPDATES):
                    await device.publish(update_topic, encode(_update(i)), qos=1)
                    if i < N_UPDATES * 3 // 10:
                        await asyncio.sleep(0.003)
                    if i == N_UPDATES * 6 // 10:
                        at_kill_point.set()

            publisher = asyncio.create_task(publish_all(), name="device:publish")
            await asyncio.wait_for(at_kill_point.wait(), 60)
            await gateway.kill()
            at_kill = len(distinct_updates(updates.messages))
            await gateway.start()
            await asyncio.wait_for(publisher, 60)
            await updates.wait_until(
                lambda ms: len(distinct_updates(ms)) == N_UPDATES, 90, "every update"
            )
            assert await gateway.terminate() == 0
        except BaseException:
            print(gateway.log_text()[-8000:])
            raise
    parts = [m for m in updates.messages if isinstance(m, PartUpdate)]
    ids = [m.message_id for m in parts]
    duplicates = len(ids) - len(set(ids))
    print(
        f"\ngateway SIGKILL: {N_UPDATES} updates published, {len(distinct_updates(parts))} "
        f"reached Kafka; {len(set(ids))} distinct part records of {len(ids)} "
        f"({duplicates} duplicates); killed after {at_kill} updates; "
        f"after restart: {_metrics(gateway.log_text())}"
    )
    assert len(set(ids)) == 2 * N_UPDATES
    assert 0 < at_kill < N_UPDATES, "the kill must land mid-stream"
    assert {m.payload.part for m in parts if m.update_id == "u-5"} == {"shared", "expert-1"}
    assert all(k in {b"shared", b"expert-0", b"expert-1", b"expert-2", b"expert-3"}
               for k in updates.keys)  # fmt: skip


@pytest.mark.timeout(90)
async def test_hostile_input_dead_letters_and_kafka_reaches_devices(
    broker: BrokerSettings,
) -> None:
    table = broker.topic_table()
    settings = GatewaySettings(client_id=f"gw-{broker.namespace}", group_id="gw-egress")
    runtime = RuntimeSettings(poll_timeout_s=0.2, session_timeout_s=6.0, drain_timeout_s=10.0)
    hostile = _update(1, device="dev-2")  # payload says dev-2, topic says dev-1
    garbage = b"\xde\xad\xbe\xef" * 10
    good = Telemetry(
        message_id="t-1", device_id="dev-1", round=1, timestamp=2.0, device_type=0,
        compute_ms_per_sample=1.0, bandwidth_kbps=10.0, memory_mb=32.0, battery=1.0,
        num_samples=5, routing_histogram=(1.0,),
    )  # fmt: skip
    assignment = Assignment(
        message_id="a-1", device_id="dev-1", round=3, timestamp=3.0, experts=(1, 2),
        deadline=100.0, model_versions={"expert-1": 0},
    )  # fmt: skip
    version = PartVersion(
        message_id="v-1", device_id="aggregator", round=3, timestamp=3.0, part="expert-2",
        version=4, layout_version=1, tensors={"w": np.ones((2, 2), dtype=np.float32)},
    )  # fmt: skip
    async with (
        TopicCollector(broker, table.name(Topic.DEAD_LETTER)) as letters,
        TopicCollector(broker, table.name(Topic.TELEMETRY)) as telemetry,
        Gateway(broker, settings, runtime) as gateway,
        _device(broker, f"dev-{broker.namespace}") as device,
    ):
        await asyncio.wait_for(gateway.connected.wait(), 30)
        await device.subscribe(table.mqtt(MqttTopic.ASSIGNMENT, device="dev-1"), qos=1)
        update_topic = table.mqtt(MqttTopic.UPDATE, device="dev-1")
        await device.publish(update_topic, encode(hostile), qos=1)
        await device.publish(update_topic, garbage, qos=1)
        await device.publish(table.mqtt(MqttTopic.TELEMETRY, device="dev-1"), encode(good), qos=1)
        await letters.wait_until(lambda ms: len(ms) >= 2, 30, "two dead letters")
        await telemetry.wait_until(lambda ms: any(m.message_id == "t-1" for m in ms), 30, "t-1")

        # Kafka → MQTT: an assignment reaches the device's topic.
        await produce(broker, table.name(Topic.ASSIGNMENTS), [(b"dev-1", encode(assignment))])
        async with asyncio.timeout(30):
            async for message in device.messages:
                assert isinstance(message.payload, bytes)
                received = decode(message.payload)
                if received.message_id == "a-1":
                    break
        assert received == assignment

        # A part version is retained: a subscriber arriving after it was published gets it.
        await device.subscribe(table.mqtt(MqttTopic.MODEL), qos=1)
        await produce(broker, table.name(Topic.MODEL), [(b"expert-2", encode(version))])
        async with asyncio.timeout(30):  # first the live delivery: now it is published
            async for message in device.messages:
                assert isinstance(message.payload, bytes)
                if decode(message.payload).message_id == "v-1":
                    break
        async with (
            mqtt_client(broker, client_id=f"late-{broker.namespace}", persistent=False) as late,
            asyncio.timeout(30),
        ):
            await late.subscribe(table.mqtt(MqttTopic.MODEL), qos=1)
            async for message in late.messages:
                assert isinstance(message.payload, bytes)
                retained = decode(message.payload)
                assert message.retain
                break
        assert isinstance(retained, PartVersion)
        assert retained.version == 4
        gateway.stop()
        await asyncio.wait_for(gateway.wait(), 30)
    by_error = {d.error: d for d in letters.messages if isinstance(d, DeadLetter)}
    assert by_error["DeviceMismatch"].original == encode(hostile)
    assert by_error["DeviceMismatch"].source == update_topic
    (garbage_letter,) = [d for e, d in by_error.items() if e != "DeviceMismatch"]
    assert garbage_letter.original == garbage
    assert garbage_letter.error.endswith("Error")
    snap = gateway.metrics.snapshot()
    assert snap["dead_lettered"] == 2
    assert snap["published"] == 2
    assert snap["pubacked"] >= 3


class _KafkaNeverAcks:
    """A producer whose acks never come (Kafka unreachable after the enqueue)."""

    def __init__(self) -> None:
        self.sent = 0
        self.changed = asyncio.Event()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[RecordAck]:
        self.sent += 1
        self.changed.set()
        return asyncio.get_running_loop().create_future()


@pytest.mark.timeout(60)
async def test_messages_not_acked_by_kafka_are_redelivered(broker: BrokerSettings) -> None:
    """Manual PUBACK, deterministically: a gateway that received updates but never got Kafka's
    acks dies without PUBACKs; the next connection of its session gets them all again."""
    table = broker.topic_table()
    n = 10
    session = MqttSession(broker, client_id=f"gw-{broker.namespace}", receive_maximum=n)
    filters = subscriptions(table, "gateway")

    def ingress(producer: object, metrics: ServiceMetrics) -> Ingress:
        return Ingress(
            session=session,
            producer=producer,  # type: ignore[arg-type]
            table=table,
            metrics=metrics,
            backoff=Backoff(0.01, 0.1),
            window=n,
        )

    async with session:
        for f in filters:
            await session.subscribe(f, qos=1)
    async with _device(broker, f"dev-{broker.namespace}") as device:
        for i in range(n):
            await device.publish(
                table.mqtt(MqttTopic.UPDATE, device="dev-1"), encode(_update(i)), qos=1
            )
    # First life: every message is received and its parts enqueued, no ack ever comes.
    stuck, first = _KafkaNeverAcks(), ServiceMetrics("gateway")
    async with session:
        task = asyncio.create_task(ingress(stuck, first).run(asyncio.Event()))
        async with asyncio.timeout(20):
            while stuck.sent < 2 * n:
                stuck.changed.clear()
                await stuck.changed.wait()
        task.cancel()  # the crash: no PUBACK was sent
        await asyncio.wait({task})
    assert first.get(Outcome.RECEIVED) == n
    assert first.get(Outcome.PUBACKED) == 0
    # Second life, Kafka is back: the broker redelivers all of them.
    second, stop = ServiceMetrics("gateway"), asyncio.Event()
    async with (
        TopicCollector(broker, table.name(Topic.UPDATES)) as updates,
        KafkaProducer(broker, client_id="gw-test") as producer,
        session,
    ):
        task = asyncio.create_task(ingress(producer, second).run(stop))
        await updates.wait_until(
            lambda ms: (
                {m.update_id for m in ms if isinstance(m, PartUpdate)}
                == {f"u-{i}" for i in range(n)}
            ),
            30,
            "every update again",
        )
        stop.set()
        await asyncio.wait_for(task, 10)
    assert second.get(Outcome.RECEIVED) == n
    assert second.get(Outcome.PUBACKED) == n


@pytest.mark.timeout(120)
async def test_a_retained_device_publish_has_no_effect_and_is_counted(
    broker: BrokerSettings,
) -> None:
    """A retained update waits at the broker for every gateway that subscribes later, which
    would apply it as if sent anew: the gateway refuses it (dead letter, `retained_rejected`)
    and produces nothing of it; a device's retained status stays welcome (its last will)."""
    table = broker.topic_table()
    # Without the share group: Mosquitto delivers retained messages to plain subscriptions only.
    settings = GatewaySettings(
        client_id=f"gw-{broker.namespace}", group_id="gw-egress", shared_subscription=False
    )
    runtime = RuntimeSettings(poll_timeout_s=0.2, session_timeout_s=6.0, drain_timeout_s=10.0)
    planted = _update(7)
    status = DeviceStatus(message_id="s-1", device_id="dev-1", round=0, timestamp=1.0, online=True)
    async with _device(broker, f"dev-{broker.namespace}") as device:
        await device.publish(table.mqtt(MqttTopic.UPDATE, device="dev-1"), encode(planted),
                             qos=1, retain=True)  # fmt: skip
        await device.publish(table.mqtt(MqttTopic.STATUS, device="dev-1"), encode(status),
                             qos=1, retain=True)  # fmt: skip
    async with (
        TopicCollector(broker, table.name(Topic.DEAD_LETTER)) as letters,
        TopicCollector(broker, table.name(Topic.TELEMETRY)) as telemetry,
        TopicCollector(broker, table.name(Topic.UPDATES)) as updates,
        Gateway(broker, settings, runtime) as gateway,
    ):
        await letters.wait_until(lambda ms: len(ms) >= 1, 30, "the retained update refused")
        await telemetry.wait_until(
            lambda ms: any(m.message_id == "s-1" for m in ms), 30, "the retained status"
        )
        gateway.stop()
        await asyncio.wait_for(gateway.wait(), 30)
    (letter,) = [d for d in letters.messages if isinstance(d, DeadLetter)]
    assert letter.error == "RetainedPublish"
    assert letter.original == encode(planted)
    assert updates.messages == []  # nothing of it reached the aggregators
    assert gateway.notes["retained_rejected"] == 1
    assert gateway.metrics.snapshot()["retained_rejected"] == 1
    async with mqtt_client(broker, client_id=f"clean-{broker.namespace}", persistent=False) as c:
        # Clear the planted message so no later subscriber of this root meets it.
        await c.publish(table.mqtt(MqttTopic.UPDATE, device="dev-1"), b"", qos=1, retain=True)


@pytest.mark.timeout(120)
async def test_a_live_retained_device_publish_is_refused_through_the_share_group(
    broker: BrokerSettings,
) -> None:
    """The gateway subscribes with MQTT 5's retain-as-published, so a device's retained
    publish is seen as retained even live, through the shared subscription, and refused."""
    table = broker.topic_table()
    settings = GatewaySettings(client_id=f"gw-{broker.namespace}", group_id="gw-egress")
    assert settings.shared_subscription
    runtime = RuntimeSettings(poll_timeout_s=0.2, session_timeout_s=6.0, drain_timeout_s=10.0)
    planted = _update(8)
    async with (
        TopicCollector(broker, table.name(Topic.DEAD_LETTER)) as letters,
        TopicCollector(broker, table.name(Topic.UPDATES)) as updates,
        Gateway(broker, settings, runtime) as gateway,
    ):
        await asyncio.wait_for(gateway.connected.wait(), 30)
        async with _device(broker, f"dev-{broker.namespace}") as device:
            await device.publish(table.mqtt(MqttTopic.UPDATE, device="dev-1"), encode(planted),
                                 qos=1, retain=True)  # fmt: skip
        await letters.wait_until(lambda ms: len(ms) >= 1, 30, "the live retained update refused")
        gateway.stop()
        await asyncio.wait_for(gateway.wait(), 30)
    (letter,) = [d for d in letters.messages if isinstance(d, DeadLetter)]
    assert letter.error == "RetainedPublish"
    assert updates.messages == []
    assert gateway.notes["retained_rejected"] == 1
    async with mqtt_client(broker, client_id=f"clean-{broker.namespace}", persistent=False) as c:
        await c.publish(table.mqtt(MqttTopic.UPDATE, device="dev-1"), b"", qos=1, retain=True)


async def _readyz(port: int) -> tuple[int, str]:
    status, body = await http_get("127.0.0.1", port, "/readyz", 5.0)
    return status, body.strip()


async def _readyz_until(port: int, status: int, timeout_s: float) -> str:
    async with asyncio.timeout(timeout_s):
        while True:
            got, why = await _readyz(port)
            if got == status:
                return why
            await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_readyz_is_not_ready_while_the_mqtt_session_is_down(broker: BrokerSettings) -> None:
    """Kafka alone is half a gateway: `/readyz` answers 503 while MQTT is unreachable, though
    the egress consumer polls, and 200 once a gateway has its MQTT session."""
    settings = GatewaySettings(client_id=f"gw-{broker.namespace}", group_id="gw-egress")
    nowhere = dataclasses.replace(broker, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    port = free_port()
    runtime = RuntimeSettings(poll_timeout_s=0.2, session_timeout_s=6.0, metrics_port=port)
    async with Gateway(nowhere, settings, runtime) as gateway:
        why = await _readyz_until(port, 503, 30)
        async with asyncio.timeout(30):
            while "MQTT" not in why:  # first "no poll answered yet", then the MQTT reason
                _, why = await _readyz(port)
                await asyncio.sleep(0.2)
        assert why == "MQTT session not connected"
        assert gateway.metrics.ready(runtime.ready_max_lag)[0]  # Kafka's side is ready
        gateway.stop()
        await asyncio.wait_for(gateway.wait(), 30)
    port = free_port()
    runtime = dataclasses.replace(runtime, metrics_port=port)
    async with Gateway(broker, settings, runtime) as gateway:
        await asyncio.wait_for(gateway.connected.wait(), 30)
        assert await _readyz_until(port, 200, 30) == "ready"
        gateway.stop()
        await asyncio.wait_for(gateway.wait(), 30)
