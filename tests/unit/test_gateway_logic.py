"""The gateway's pure decisions, and its two I/O pieces (ingress PUBACK order, egress) on fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from brokers.errors import BrokerUnavailable
from brokers.kafka import RecordAck
from brokers.mqtt import MqttMessage
from brokers.settings import BrokerSettings
from schemas import (
    Assignment,
    DeadLetter,
    DeviceStatus,
    ModelUpdate,
    PartClosed,
    PartPayload,
    PartUpdate,
    PartVersion,
    RoundClosed,
    RoundOpened,
    Telemetry,
    UpdateAck,
    decode,
    encode,
)
from schemas.limits import MAX_MESSAGE_BYTES
from schemas.topics import Topic, TopicTable
from services.errors import InvalidPayload
from services.gateway.app import EgressHandler, Ingress
from services.gateway.logic import (
    Forward,
    InboundKind,
    Publish,
    Reject,
    Skip,
    parse_device_topic,
    route_inbound,
    route_outbound,
    split_update,
    subscriptions,
)
from services.handler import InboundRecord
from services.metrics import Outcome, ServiceMetrics
from services.runtime import Backoff

pytestmark = pytest.mark.timeout(10)

TABLE = TopicTable(namespace="unit", mqtt_root="fleet")


def telemetry(device: str = "dev-1") -> Telemetry:
    return Telemetry(
        message_id="t1",
        device_id=device,
        round=2,
        timestamp=5.0,
        device_type=1,
        compute_ms_per_sample=2.0,
        bandwidth_kbps=100.0,
        memory_mb=64.0,
        battery=0.5,
        num_samples=10,
        routing_histogram=(0.5, 0.5),
    )


def part(name: str) -> PartPayload:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    return PartPayload(part=name, base_version=1, weight=3.0, loss=0.1, tensors={"w": w})


def update(device: str = "dev-1", message_id: str = "u-1", parts: int = 3) -> ModelUpdate:
    names = ["shared"] + [f"expert-{i}" for i in range(parts - 1)]
    return ModelUpdate(
        message_id=message_id,
        device_id=device,
        round=4,
        timestamp=9.0,
        num_samples=30,
        train_seconds=1.5,
        parts=tuple(part(n) for n in names),
    )


def test_subscriptions_share_the_device_topics() -> None:
    assert subscriptions(TABLE, None) == ["fleet/+/telemetry", "fleet/+/status", "fleet/+/update"]
    assert subscriptions(TABLE, "gw") == [
        "$share/gw/fleet/+/telemetry",
        "$share/gw/fleet/+/status",
        "$share/gw/fleet/+/update",
    ]
    with pytest.raises(ValueError):
        subscriptions(TABLE, "a/b")


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("fleet/dev-1/update", ("dev-1", InboundKind.UPDATE)),
        ("fleet/dev-1/telemetry", ("dev-1", InboundKind.TELEMETRY)),
        ("fleet/dev-1/status", ("dev-1", InboundKind.STATUS)),
        ("fleet/model/update", None),  # reserved device id
        ("other/dev-1/update", None),
        ("fleet/dev-1/assignment", None),
        ("fleet/dev-1/update/x", None),
    ],
)
def test_parse_device_topic(topic: str, expected: tuple[str, InboundKind] | None) -> None:
    assert parse_device_topic(TABLE, topic) == expected


def test_telemetry_and_status_go_to_telemetry_keyed_by_device() -> None:
    status = DeviceStatus(
        message_id="s", device_id="dev-1", round=0, timestamp=1.0, online=False, reason="lwt"
    )
    for message in (telemetry(), status):
        kind = "telemetry" if isinstance(message, Telemetry) else "status"
        decision = route_inbound(TABLE, f"fleet/dev-1/{kind}", encode(message))
        assert isinstance(decision, Forward)
        (out,) = decision.outputs
        assert out.topic is Topic.TELEMETRY
        assert out.key == "dev-1"
        assert out.message == message


def test_update_is_split_into_one_record_per_part_keyed_by_part() -> None:
    decision = route_inbound(TABLE, "fleet/dev-1/update", encode(update()))
    assert isinstance(decision, Forward)
    assert decision.kind is InboundKind.UPDATE
    assert [o.topic for o in decision.outputs] == [Topic.UPDATES] * 3
    assert [o.key for o in decision.outputs] == ["shared", "expert-0", "expert-1"]
    parts = [o.message for o in decision.outputs]
    assert all(isinstance(p, PartUpdate) for p in parts)
    assert [p.message_id for p in parts] == ["u-1/shared", "u-1/expert-0", "u-1/expert-1"]
    first = parts[0]
    assert isinstance(first, PartUpdate)
    assert (first.update_id, first.parts_total, first.num_samples) == ("u-1", 3, 30)
    assert (first.device_id, first.round, first.timestamp) == ("dev-1", 4, 9.0)
    assert np.array_equal(first.payload.tensors["w"], part("shared").tensors["w"])


def test_split_is_deterministic_for_redeliveries() -> None:
    assert [p.message_id for p in split_update(update())] == [
        p.message_id for p in split_update(update())
    ]


@pytest.mark.parametrize(
    ("topic", "payload", "error"),
    [
        ("fleet/dev-2/update", encode(update("dev-1")), "DeviceMismatch"),
        ("fleet/dev-1/telemetry", encode(update()), "WrongMessageType"),
        ("fleet/dev-1/update", encode(telemetry()), "WrongMessageType"),
        ("fleet/dev-1/update", b"\xc1\xc1garbage", None),  # a SchemaError subclass
        ("fleet/dev-1/update", b"", None),
        ("fleet/dev-1/update", b"\x00" * (MAX_MESSAGE_BYTES + 1), "OversizeError"),
        ("fleet/model/update", encode(update()), "UnknownTopic"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(topic: str, payload: bytes, error: str | None) -> None:
    decision = route_inbound(TABLE, topic, payload)
    assert isinstance(decision, Reject)
    assert decision.reason
    if error is not None:
        assert decision.error == error
    else:
        assert decision.error.endswith("Error")


def test_update_whose_part_ids_would_be_too_long_is_rejected() -> None:
    decision = route_inbound(TABLE, "fleet/dev-1/update", encode(update(message_id="u" * 128)))
    assert isinstance(decision, Reject)
    assert decision.reason.startswith("cannot split update")
    assert decision.device == "dev-1"


def test_route_outbound() -> None:
    assignment = Assignment(
        message_id="a", device_id="dev-9", round=1, timestamp=1.0, experts=(0, 2),
        deadline=99.0, model_versions={"shared": 1},
    )  # fmt: skip
    ack = UpdateAck(
        message_id="k", device_id="dev-9", round=1, timestamp=1.0, update_id="u", part="shared",
        status="applied",
    )  # fmt: skip
    version = PartVersion(
        message_id="v", device_id="aggregator", round=1, timestamp=1.0, part="expert-3",
        version=7, layout_version=1, tensors={"w": np.zeros(3, dtype=np.float32)},
    )  # fmt: skip
    name = TABLE.name
    assert route_outbound(TABLE, name(Topic.ASSIGNMENTS), assignment) == [
        Publish("fleet/dev-9/assignment", retain=False)
    ]
    assert route_outbound(TABLE, name(Topic.ACKS), ack) == [
        Publish("fleet/dev-9/ack", retain=False)
    ]
    # A part without a gate row (here: none of the gate tensors) goes out whole only.
    assert route_outbound(TABLE, name(Topic.MODEL), version) == [
        Publish("fleet/model/expert-3", retain=True)
    ]
    wrong = route_outbound(TABLE, name(Topic.ACKS), assignment)
    assert isinstance(wrong, Reject)
    assert wrong.error == "WrongMessageType"
    other = route_outbound(TABLE, name(Topic.TELEMETRY), assignment)
    assert isinstance(other, Reject)
    assert other.error == "UnknownTopic"
    reserved = Assignment(
        message_id="a", device_id="model", round=1, timestamp=1.0, experts=(), deadline=1.0,
        model_versions={},
    )  # fmt: skip
    bad = route_outbound(TABLE, name(Topic.ASSIGNMENTS), reserved)
    assert isinstance(bad, Reject)
    assert bad.error == "BadDeviceId"


def test_an_expert_part_goes_out_whole_and_as_its_gate_row_for_devices_of_schema_1_0() -> None:
    tensors = {
        "fc1.weight": np.ones((64, 3), dtype=np.float32),
        "gate.weight": np.full(3, 0.5, dtype=np.float32),
        "gate.bias": np.zeros(1, dtype=np.float32),
    }
    version = PartVersion(
        message_id="v", device_id="aggregator", round=1, timestamp=1.0, part="expert-3",
        version=7, layout_version=1, tensors=tensors, contributors=2, samples=9.0,
    )  # fmt: skip
    whole, gate = route_outbound(TABLE, TABLE.name(Topic.MODEL), version)  # type: ignore[misc]
    assert whole == Publish("fleet/model/expert-3", retain=True)
    assert (gate.topic, gate.retain) == ("fleet/gate/expert-3", True)
    assert gate.payload is not None
    row = decode(gate.payload)
    assert isinstance(row, PartVersion)
    assert (row.message_id, row.part, row.version, row.contributors) == ("v", "expert-3", 7, 2)
    assert set(row.tensors) == {"gate.weight", "gate.bias"}
    np.testing.assert_array_equal(row.tensors["gate.weight"], tensors["gate.weight"])
    assert len(gate.payload) < len(encode(version)) / 2


def round_closed(round_: int = 3) -> RoundClosed:
    return RoundClosed(
        message_id=f"rc-{round_}", device_id="matcher", round=round_, timestamp=1.0,
        reason="complete", parts_closed=3, model_versions={"shared": 2, "expert-0": 1},
    )  # fmt: skip


def test_round_closed_goes_out_retained_and_other_round_events_are_skipped() -> None:
    rounds = TABLE.name(Topic.ROUNDS)
    assert route_outbound(TABLE, rounds, round_closed()) == [Publish("fleet/round", retain=True)]
    opened = RoundOpened(
        message_id="ro", device_id="matcher", round=4, timestamp=1.0, deadline=9.0,
        strategy="fitness", devices=2, expected_parts={"shared": 2}, model_versions={},
    )  # fmt: skip
    closed_part = PartClosed(
        message_id="pc", device_id="aggregator", round=4, timestamp=1.0, part="shared",
        version=3, applied=2, reason="quorum",
    )  # fmt: skip
    for message in (opened, closed_part):
        decision = route_outbound(TABLE, rounds, message)
        assert isinstance(decision, Skip), message
        assert type(message).__name__ in decision.reason
    # A RoundClosed on any other topic is still a stray.
    stray = route_outbound(TABLE, TABLE.name(Topic.ACKS), round_closed())
    assert isinstance(stray, Reject)
    assert stray.error == "WrongMessageType"


# -- the I/O pieces on fakes -----------------------------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.fail: list[Exception] = []

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.published.append((topic, payload, qos, retain))


def inbound(topic: str, message: Any) -> InboundRecord:
    raw = encode(message)
    return InboundRecord(topic=topic, partition=0, offset=0, key=None, message=message, raw=raw)


async def test_egress_publishes_raw_bytes_and_refuses_strays() -> None:
    publisher, metrics = FakePublisher(), ServiceMetrics("gateway")
    handler = EgressHandler(TABLE, publisher, metrics)
    version = PartVersion(
        message_id="v", device_id="aggregator", round=1, timestamp=1.0, part="shared",
        version=2, layout_version=1, tensors={"w": np.ones(2, dtype=np.float32)},
    )  # fmt: skip
    record = inbound(TABLE.name(Topic.MODEL), version)
    assert await handler.handle(record) == []
    assert publisher.published == [("fleet/model/shared", record.raw, 1, True)]
    assert metrics.get(Outcome.PUBLISHED) == 1
    with pytest.raises(InvalidPayload):
        await handler.handle(inbound(TABLE.name(Topic.ACKS), version))
    publisher.fail = [BrokerUnavailable("mqtt down")]
    with pytest.raises(BrokerUnavailable):  # retriable: the runtime retries, no commit
        await handler.handle(record)


async def test_egress_forwards_round_closed_retained_and_skips_other_round_events() -> None:
    publisher, metrics = FakePublisher(), ServiceMetrics("gateway")
    handler = EgressHandler(TABLE, publisher, metrics)
    closed = inbound(TABLE.name(Topic.ROUNDS), round_closed(5))
    assert await handler.handle(closed) == []
    assert publisher.published == [("fleet/round", closed.raw, 1, True)]
    marker = PartClosed(
        message_id="pc", device_id="aggregator", round=5, timestamp=1.0, part="expert-0",
        version=1, applied=0, reason="deadline",
    )  # fmt: skip
    assert await handler.handle(inbound(TABLE.name(Topic.ROUNDS), marker)) == []
    assert len(publisher.published) == 1  # nothing published, nothing dead-lettered
    assert metrics.get(Outcome.SKIPPED) == 1
    assert metrics.get(Outcome.PUBLISHED) == 1


class FakeSession:
    """Yields the given messages, then waits; records PUBACKs."""

    def __init__(self, messages: list[MqttMessage]) -> None:
        self._messages = messages
        self.acked: list[int] = []
        self.changed = asyncio.Event()

    async def messages(self) -> AsyncIterator[MqttMessage]:
        for m in self._messages:
            yield m
        await asyncio.Event().wait()

    def ack(self, message: MqttMessage) -> bool:
        self.acked.append(message.mid)
        self.changed.set()
        return True


class HeldProducer:
    """Acks are held until released one by one (by send order)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.futures: list[asyncio.Future[RecordAck]] = []
        self.changed = asyncio.Event()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[RecordAck]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[RecordAck] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        self.changed.set()
        return fut


async def until(predicate: Callable[[], bool], changed: asyncio.Event) -> None:
    async with asyncio.timeout(2):
        while not predicate():
            changed.clear()
            await changed.wait()


def mqtt(mid: int, topic: str, payload: bytes) -> MqttMessage:
    return MqttMessage(topic=topic, payload=payload, qos=1, retain=False, mid=mid, connection=1)


async def test_ingress_pubacks_in_order_and_only_after_every_kafka_ack() -> None:
    messages = [
        mqtt(1, "fleet/dev-1/update", encode(update(parts=2))),  # 2 records
        mqtt(2, "fleet/dev-2/update", encode(update("dev-1"))),  # hostile → 1 dead letter
        mqtt(3, "fleet/dev-1/telemetry", encode(telemetry())),  # 1 record
    ]
    session, producer, metrics = FakeSession(messages), HeldProducer(), ServiceMetrics("gateway")
    ingress = Ingress(
        session=session,  # type: ignore[arg-type]
        producer=producer,
        table=TABLE,
        metrics=metrics,
        backoff=Backoff(0.001, 0.01),
        window=8,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(ingress.run(stop))
    await until(lambda: len(producer.futures) == 4, producer.changed)
    assert session.acked == []
    # Acks of the later messages first: still no PUBACK, the first message is not done.
    for fut in producer.futures[2:]:
        fut.set_result(RecordAck("t", 0, 0))
    await asyncio.sleep(0.01)  # a negative can only be shown by giving it time
    assert session.acked == []
    producer.futures[0].set_result(RecordAck("t", 0, 0))
    await asyncio.sleep(0.01)
    assert session.acked == []  # one part of update 1 is still unacknowledged
    producer.futures[1].set_result(RecordAck("t", 0, 0))
    await until(lambda: len(session.acked) == 3, session.changed)
    assert session.acked == [1, 2, 3]
    topics = [t for t, _, _ in producer.sent]
    expected = [Topic.UPDATES, Topic.UPDATES, Topic.DEAD_LETTER, Topic.TELEMETRY]
    assert topics == [TABLE.name(t) for t in expected]
    letter = decode(producer.sent[2][2])
    assert isinstance(letter, DeadLetter)
    assert letter.error == "DeviceMismatch"
    assert letter.source == "fleet/dev-2/update"
    assert producer.sent[2][1] == b"fleet/dev-2/update"
    stop.set()
    await asyncio.wait_for(task, 2)
    snap = metrics.snapshot()
    assert (snap["received"], snap["handled"], snap["dead_lettered"]) == (3, 2, 1)
    assert (snap["produced"], snap["pubacked"]) == (4, 3)


async def test_ingress_stop_leaves_unacknowledged_messages_without_puback() -> None:
    session = FakeSession([mqtt(7, "fleet/dev-1/telemetry", encode(telemetry()))])
    producer = HeldProducer()
    ingress = Ingress(
        session=session,  # type: ignore[arg-type]
        producer=producer,
        table=TABLE,
        metrics=ServiceMetrics("gateway"),
        backoff=Backoff(0.001, 0.01),
        window=8,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(ingress.run(stop))
    await until(lambda: len(producer.futures) == 1, producer.changed)
    producer.futures[0].set_exception(BrokerUnavailable("kafka down"))
    stop.set()  # the re-send backoff is interrupted: no PUBACK, the broker redelivers later
    await asyncio.wait_for(task, 2)
    assert session.acked == []


def test_broker_settings_give_the_same_table() -> None:
    assert BrokerSettings(namespace="unit").topic_table() == TABLE


def test_mqtt_errors_are_translated() -> None:
    import aiomqtt
    from aiomqtt.exceptions import MqttConnectError
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from brokers.errors import BrokerError, BrokerTimeout
    from brokers.mqtt import translate

    lost = translate(aiomqtt.MqttCodeError(7, "Unexpected disconnection"), "publish x")
    assert isinstance(lost, BrokerUnavailable)
    assert isinstance(translate(aiomqtt.MqttError("Operation timed out"), "sub"), BrokerTimeout)
    assert isinstance(translate(OSError("refused"), "connect"), BrokerUnavailable)
    bad_login = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x86))
    refused = translate(bad_login, "connect")
    assert type(refused) is BrokerError
    assert not refused.retriable
    busy = translate(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x89)), "c")
    assert isinstance(busy, BrokerUnavailable)


def test_service_command_lists_services_and_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from fedmoe.commands.service import main as service_main

    assert service_main(["--help"]) == 0
    assert "gateway" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        service_main(["gateway", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for env in (
        "FEDMOE_GATEWAY_CLIENT_ID",
        "FEDMOE_GATEWAY_SHARE_GROUP",
        "FEDMOE_KAFKA_BOOTSTRAP",
        "FEDMOE_MQTT_URL",
        "FEDMOE_RUNTIME_MAX_BATCH",
    ):
        assert env in text
    assert service_main(["nope"]) == 2
    assert service_main(["gateway", "--window", "0"]) == 2
    assert "FEDMOE_GATEWAY_WINDOW" in capsys.readouterr().err
