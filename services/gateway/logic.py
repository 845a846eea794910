"""The gateway's decisions, pure: no aiokafka, no aiomqtt, no clock, no I/O.

MQTT → Kafka (`route_inbound`): which device topic a message came in on, whether it passes the
cheap checks (size, decodable, schema version, message type for the topic, device id in the
topic = device id in the payload), and what to produce for it:

    {root}/{dev}/telemetry  Telemetry     → Kafka `telemetry`, key = device id
    {root}/{dev}/status     DeviceStatus  → Kafka `telemetry`, key = device id
    {root}/{dev}/update     ModelUpdate   → Kafka `updates`, one PartUpdate per part,
                                            message id f"{update_id}/{part}", key = part id
                            MessageChunk  → Kafka `updates` as is, key = its part: a chunk of
                                            one of those PartUpdates, too large for one
                                            message (`schemas.chunks`); the aggregator's
                                            runtime reassembles and verifies the whole

Anything else is a `Reject` (→ dead letter) with a reason. A device id mismatch is treated as
hostile (a device speaking for another) and rejected like garbage. So is a retained publish on
any device topic but `status` (`check_retained`): a retained update or telemetry would be
delivered again to every gateway that subscribes later, and applied as if sent anew.
Before any of this the gateway charges the message to its device's token bucket
(`services.gateway.ratelimit`): over the device's rate it is dropped and counted.

Kafka → MQTT (`route_outbound`): where a record of `assignments`, `acks`, `model` or `rounds`
goes:

    assignments  Assignment   → {root}/{device}/assignment   QoS 1
    acks         UpdateAck    → {root}/{device}/ack          QoS 1
    model        PartVersion  → {root}/model/{part}          QoS 1, retained; one larger than
                                                             a message as its chunks, each
                                                             retained on {root}/model/{part}/{i}
                              + {root}/gate/{part}           QoS 1, retained: an expert part's
                                                             gate row alone, for devices of
                                                             schema 1.0 (see `route_outbound`)
    rounds       RoundClosed  → {root}/round                 QoS 1, retained (the latest one;
                                                             since 1.1 with every expert's gate
                                                             row, which 1.1 devices take)
    rounds       anything else (RoundOpened, PartClosed): `Skip`, the services' own business
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from schemas import decode, encode
from schemas.errors import OversizeError, SchemaError
from schemas.limits import MAX_ID_CHARS, MAX_MESSAGE_BYTES
from schemas.messages import (
    Assignment,
    DeviceStatus,
    Message,
    MessageChunk,
    ModelUpdate,
    PartUpdate,
    PartVersion,
    RoundClosed,
    Telemetry,
    UpdateAck,
    gate_row,
    split_update,
    valid_part_id,
)
from schemas.topics import RESERVED_DEVICE_IDS, MqttTopic, Topic, TopicTable, valid_segment
from services.handler import Outbound


class InboundKind(StrEnum):
    """The device topics the gateway listens to (the last topic segment)."""

    TELEMETRY = "telemetry"
    STATUS = "status"
    UPDATE = "update"


_PATTERNS = {
    InboundKind.TELEMETRY: MqttTopic.TELEMETRY,
    InboundKind.STATUS: MqttTopic.STATUS,
    InboundKind.UPDATE: MqttTopic.UPDATE,
}
_EXPECTED: dict[InboundKind, type[Message]] = {
    InboundKind.TELEMETRY: Telemetry,
    InboundKind.STATUS: DeviceStatus,
    InboundKind.UPDATE: ModelUpdate,
}


@dataclass(frozen=True, slots=True)
class Forward:
    """Produce `outputs` (all of them acknowledged before the device's PUBACK)."""

    kind: InboundKind
    device: str
    message: Message
    outputs: tuple[Outbound, ...]


@dataclass(frozen=True, slots=True)
class Reject:
    """Dead-letter the input: `reason` for people, `error` the error class name."""

    reason: str
    error: str
    device: str | None = None


def subscriptions(table: TopicTable, share_group: str | None) -> list[str]:
    """The MQTT filters to subscribe to; `$share/{group}/...` when `share_group` is given."""
    filters = [table.mqtt(pattern) for pattern in _PATTERNS.values()]
    if share_group is None:
        return filters
    if not valid_segment(share_group):
        raise ValueError(f"bad share group name {share_group!r}")
    return [f"$share/{share_group}/{f}" for f in filters]


def parse_device_topic(table: TopicTable, topic: str) -> tuple[str, InboundKind] | None:
    """(device id, kind) of `{root}/{device}/{kind}`, or None for any other topic."""
    device = table.mqtt_device_of(topic)
    if device is None or not valid_segment(device):
        return None
    kind = topic.rsplit("/", 1)[-1]
    try:
        return device, InboundKind(kind)
    except ValueError:
        return None


def check_retained(kind: InboundKind, retain: bool, device: str) -> Reject | None:
    """A `Reject` for a retained publish on a device topic other than `status` (a device's
    status is retained by design: it is also its last will), else None."""
    if not retain or kind is InboundKind.STATUS:
        return None
    return Reject(f"retained publish on a {kind.value} topic", "RetainedPublish", device)


def route_inbound(table: TopicTable, topic: str, payload: bytes) -> Forward | Reject:
    """What to do with one MQTT message from a device (see the module docstring)."""
    parsed = parse_device_topic(table, topic)
    if parsed is None:
        return Reject(f"not a device topic: {topic[:MAX_ID_CHARS]!r}", "UnknownTopic")
    device, kind = parsed
    if len(payload) > MAX_MESSAGE_BYTES:
        reason = f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}"
        return Reject(reason, OversizeError.__name__, device)
    try:
        message = decode(payload)
    except SchemaError as exc:
        return Reject(str(exc), type(exc).__name__, device)
    if isinstance(message, MessageChunk) and kind is InboundKind.UPDATE:
        return _update_chunk(kind, device, message)
    expected = _EXPECTED[kind]
    if type(message) is not expected:
        reason = f"{type(message).__name__} on a {kind.value} topic (expected {expected.__name__})"
        return Reject(reason, "WrongMessageType", device)
    if message.device_id != device:
        reason = f"device id {message.device_id!r} in payload, {device!r} in topic"
        return Reject(reason, "DeviceMismatch", device)
    if isinstance(message, ModelUpdate):
        try:
            parts = split_update(message)
        except SchemaError as exc:
            return Reject(f"cannot split update: {exc}", type(exc).__name__, device)
        outputs = tuple(Outbound(Topic.UPDATES, p.payload.part, p) for p in parts)
        return Forward(kind, device, message, outputs)
    return Forward(kind, device, message, (Outbound(Topic.TELEMETRY, device, message),))


def _update_chunk(kind: InboundKind, device: str, chunk: MessageChunk) -> Forward | Reject:
    """A chunk of a device's large `PartUpdate`: forwarded keyed by its part, so every chunk
    of the whole reaches the part's partition in order; the whole is checked when it is."""
    if chunk.device_id != device:
        reason = f"device id {chunk.device_id!r} in payload, {device!r} in topic"
        return Reject(reason, "DeviceMismatch", device)
    if chunk.whole_type != PartUpdate.TYPE or not valid_part_id(chunk.key):
        reason = (
            f"a chunk of a {chunk.whole_type[:64]!r} keyed {chunk.key[:64]!r} on an update topic"
        )
        return Reject(reason, "WrongMessageType", device)
    outputs = (Outbound(Topic.UPDATES, chunk.key, chunk),)
    return Forward(kind, device, chunk, outputs)


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish on `topic` (QoS 1), retained or not: `payload`, or the record's own bytes."""

    topic: str
    retain: bool
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    """Not for devices (a valid record the gateway does not forward): count it, publish nothing."""

    reason: str


def route_outbound(
    table: TopicTable, kafka_topic: str, message: Message
) -> list[Publish] | Skip | Reject:
    """Where a record read from `assignments`, `acks`, `model` or `rounds` goes on MQTT.

    A part version goes out whole: a device downloads whole only `shared` and the experts it
    was assigned (it subscribes to their `model` topics for the round). The gate rows it routes
    its data with come in the round marker (`RoundClosed.gates`, schema 1.1); an expert's row
    also goes out alone on `{root}/gate/{part}` for devices of schema 1.0, which read them
    there, so a fleet can move to 1.1 device by device (a 1.1 device does not subscribe to it).
    """
    if kafka_topic == table.name(Topic.ROUNDS):
        # The rounds topic also carries RoundOpened / PartClosed: valid, just not for devices.
        if not isinstance(message, RoundClosed):
            return Skip(f"{type(message).__name__} stays on Kafka")
        return [Publish(table.mqtt(MqttTopic.ROUND), retain=True)]
    if kafka_topic == table.name(Topic.MODEL):
        if not isinstance(message, PartVersion):
            return Reject(f"{type(message).__name__} on model", "WrongMessageType")
        publishes = [Publish(table.mqtt(MqttTopic.MODEL, part=message.part), retain=True)]
        row = gate_row(message.tensors)
        if row:
            topic = table.mqtt(MqttTopic.GATE, part=message.part)
            legacy = replace(message, tensors=row)
            publishes.append(Publish(topic, retain=True, payload=encode(legacy)))
        return publishes
    pattern: MqttTopic
    if kafka_topic == table.name(Topic.ASSIGNMENTS):
        expected: type[Message] = Assignment
        pattern = MqttTopic.ASSIGNMENT
    elif kafka_topic == table.name(Topic.ACKS):
        expected = UpdateAck
        pattern = MqttTopic.ACK
    else:
        return Reject(f"the gateway does not forward {kafka_topic!r}", "UnknownTopic")
    if type(message) is not expected:
        return Reject(f"{type(message).__name__} on {kafka_topic}", "WrongMessageType")
    device = message.device_id
    if device in RESERVED_DEVICE_IDS or not valid_segment(device):
        return Reject(f"device id {device!r} cannot be an MQTT topic segment", "BadDeviceId")
    return [Publish(table.mqtt(pattern, device=device), retain=False)]
