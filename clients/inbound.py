"""What a device accepts from MQTT, pure: topic → expected message type → checks.

    {root}/round                 RoundClosed   (retained: the latest closed round) with every
                                 expert's gate row, each checked against the gate layout
    {root}/model/{part}          PartVersion   (retained), part of this model, layout checked;
                                 `shared` always, an expert's only while it is assigned
    {root}/model/{part}/{i}      MessageChunk  (retained) chunk i of a PartVersion too large for
                                 one message: held until the whole came (`ChunkHeld`), then
                                 verified, decoded and checked as one
    {root}/{device}/assignment   Assignment    for this device, experts of this model
    {root}/{device}/ack          UpdateAck     for this device, a part of this model

Everything else (another topic, undecodable bytes, a message of the wrong type, for another
device, an unknown part, tensors off the layout) is a `Drop` with a reason: the agent counts it
and goes on. A device never crashes on what it receives.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from moe.errors import LayoutError
from moe.model import MoEConfig
from moe.parts import SHARED, check_part, expert_part_id, model_layout
from moe.tensors import PartLayout
from schemas import decode
from schemas.chunks import Budget, Reassembler
from schemas.errors import SchemaError
from schemas.limits import MAX_ASSEMBLED_BYTES
from schemas.messages import (
    GATE_TENSORS,
    Assignment,
    Message,
    MessageChunk,
    PartVersion,
    RoundClosed,
    UpdateAck,
)
from schemas.topics import MqttTopic, TopicTable


@dataclass(frozen=True, slots=True)
class ChunkHeld:
    """A chunk of a large part version, kept until the rest of it comes."""

    part: str


Inbound = RoundClosed | PartVersion | Assignment | UpdateAck | ChunkHeld

# A device reassembles only the parts it listens to (shared and its assigned experts); every
# part version has the same sender, so the per-sender cap is the whole cap.
_DEVICE_CHUNKS = Budget(
    max_wholes=16, max_per_device=16, max_bytes=2 * MAX_ASSEMBLED_BYTES, max_age_s=600.0
)


class DropReason(StrEnum):
    """Why a received message was dropped (one counter each)."""

    TOPIC = "topic"  # not a topic this device listens to
    UNDECODABLE = "undecodable"  # not a valid envelope (size, msgpack, fields)
    WRONG_TYPE = "wrong_type"  # a valid message of the wrong type for its topic
    OTHER_DEVICE = "other_device"  # addressed to another device
    UNKNOWN_PART = "unknown_part"  # a part id this model does not have
    LAYOUT = "layout"  # tensors that do not match the part layout
    BAD_ASSIGNMENT = "bad_assignment"  # experts outside the model, versions missing


@dataclass(frozen=True, slots=True)
class Drop:
    """A received message the device does not act on."""

    reason: DropReason
    detail: str


class InboundFilter:
    """Classifies the MQTT messages of one device (see the module docstring)."""

    def __init__(self, table: TopicTable, device: str, model: MoEConfig) -> None:
        self._model = model
        self._device = device
        self._table = table
        self._layout = model_layout(model)
        self._gate_layout: dict[str, PartLayout] = {
            part: {name: specs[name] for name in GATE_TENSORS}
            for part, specs in self._layout.items()
            if all(name in specs for name in GATE_TENSORS)
        }
        self._round = table.mqtt(MqttTopic.ROUND)
        self._model_prefix = table.mqtt(MqttTopic.MODEL, part="")
        self._assignment = table.mqtt(MqttTopic.ASSIGNMENT, device=device)
        self._ack = table.mqtt(MqttTopic.ACK, device=device)
        self._chunks = Reassembler(_DEVICE_CHUNKS)
        # What every device always listens to; an assigned expert's `model` topics are added
        # for the round (`part_topics`).
        self.subscriptions = [
            self._round,
            *self.part_topics(SHARED),
            self._assignment,
            self._ack,
        ]

    def part_topics(self, part: str) -> list[str]:
        """The retained topics of `part`'s versions: whole, and in chunks (`{topic}/{i}`)."""
        topic = self._table.mqtt(MqttTopic.MODEL, part=part)
        return [topic, f"{topic}/+"]

    def close(self) -> None:
        """Drop the incomplete chunked versions held (their temporary files)."""
        self._chunks.close()

    def classify(self, topic: str, payload: bytes, now: float = 0.0) -> Inbound | Drop:
        """The message to act on, or why not (`now`: the clock, to give up stale chunks)."""
        expected: type[Message]
        part = ""
        if topic == self._round:
            expected = RoundClosed
        elif topic.startswith(self._model_prefix):
            expected, part = PartVersion, topic[len(self._model_prefix) :]
            if "/" in part:
                return self._chunk(topic, part.split("/", 1)[0], payload, now)
            if part not in self._layout:
                return Drop(DropReason.UNKNOWN_PART, f"{topic[:80]!r}")
        elif topic == self._assignment:
            expected = Assignment
        elif topic == self._ack:
            expected = UpdateAck
        else:
            return Drop(DropReason.TOPIC, f"{topic[:80]!r}")
        try:
            message = decode(payload)
        except SchemaError as exc:
            return Drop(DropReason.UNDECODABLE, f"{type(exc).__name__}: {exc}")
        if type(message) is not expected:
            return Drop(DropReason.WRONG_TYPE, f"{type(message).__name__} on {topic[:80]!r}")
        return self._checked(message, part)

    def _checked(self, message: Message, part: str) -> Inbound | Drop:
        if isinstance(message, RoundClosed):
            return self._round_closed(message)
        if isinstance(message, PartVersion):
            return self._part_version(message, part)
        if message.device_id != self._device:
            return Drop(DropReason.OTHER_DEVICE, f"for {message.device_id!r}")
        if isinstance(message, Assignment):
            return self._assignment_checks(message)
        if isinstance(message, UpdateAck):
            if message.part not in self._layout:
                return Drop(DropReason.UNKNOWN_PART, f"ack of {message.part!r}")
            return message
        return Drop(DropReason.WRONG_TYPE, f"{type(message).__name__}")  # not reached

    def _chunk(self, topic: str, part: str, payload: bytes, now: float) -> Inbound | Drop:
        if part not in self._layout:
            return Drop(DropReason.UNKNOWN_PART, f"{topic[:80]!r}")
        self._chunks.expire(now)
        try:
            chunk = decode(payload)
            if not isinstance(chunk, MessageChunk):
                return Drop(DropReason.WRONG_TYPE, f"{type(chunk).__name__} on {topic[:80]!r}")
            if chunk.whole_type != PartVersion.TYPE or chunk.key != part:
                return Drop(DropReason.WRONG_TYPE, f"a chunk of {chunk.whole_type!r} {chunk.key!r}")
            assembled = self._chunks.add(chunk, now)
        except SchemaError as exc:
            return Drop(DropReason.UNDECODABLE, f"{type(exc).__name__}: {exc}")
        if assembled is None:
            return ChunkHeld(part)
        return self._checked(assembled.message, part)

    def _round_closed(self, message: RoundClosed) -> RoundClosed | Drop:
        for part, row in message.gates.items():
            if part not in self._gate_layout:
                return Drop(DropReason.UNKNOWN_PART, f"a gate row of {part!r}")
            try:
                check_part(part, row, self._gate_layout, require_finite=True)
            except LayoutError as exc:
                return Drop(DropReason.LAYOUT, str(exc))
        return message

    def _part_version(self, message: PartVersion, part: str) -> PartVersion | Drop:
        if message.part != part:
            return Drop(DropReason.UNKNOWN_PART, f"{message.part!r} on the topic of {part!r}")
        if message.layout_version != self._model.layout_version:
            return Drop(DropReason.LAYOUT, f"layout_version {message.layout_version}")
        try:
            check_part(part, message.tensors, self._layout, require_finite=True)
        except LayoutError as exc:
            return Drop(DropReason.LAYOUT, str(exc))
        return message

    def _assignment_checks(self, message: Assignment) -> Assignment | Drop:
        if any(e >= self._model.num_experts for e in message.experts):
            return Drop(DropReason.BAD_ASSIGNMENT, f"experts {message.experts}")
        needed = [SHARED, *(expert_part_id(e) for e in message.experts)]
        missing = [p for p in needed if p not in message.model_versions]
        if missing:
            return Drop(DropReason.BAD_ASSIGNMENT, f"no versions for {missing}")
        return message
