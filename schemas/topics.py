"""The one topic table: Kafka topics (partitions, compaction, key) and MQTT topic patterns.

Services, the gateway and the broker launcher all read topic names from here. A `namespace`
prefixes every Kafka topic and the MQTT root, so tests and parallel deployments never collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    """Logical Kafka topics; `TopicTable.name(Topic.X)` gives the concrete name."""

    TELEMETRY = "telemetry"  # Telemetry + DeviceStatus, key = device id
    UPDATES = "updates"  # PartUpdate, key = part id (one aggregator owns a part)
    ASSIGNMENTS = "assignments"  # Assignment, key = device id
    ACKS = "acks"  # UpdateAck, key = device id
    MODEL = "model"  # PartVersion, key = part id (compacted: latest weights per part)
    PROFILES = "profiles"  # ClientProfile, key = device id (compacted)
    EXPERT_LOAD = "expert-load"  # ExpertLoad, key = "load" (compacted)
    ROUNDS = "rounds"  # RoundOpened / RoundClosed / PartClosed, key = "round"
    METRICS = "metrics"  # EvalMetrics
    DEAD_LETTER = "dead-letter"  # DeadLetter (original bytes + reason)


@dataclass(frozen=True, slots=True)
class KafkaTopicSpec:
    """One Kafka topic's settings."""

    topic: Topic
    partitions: int
    compacted: bool
    key: str  # what the record key holds, for documentation and checks


KAFKA_TOPICS: tuple[KafkaTopicSpec, ...] = (
    KafkaTopicSpec(Topic.TELEMETRY, partitions=4, compacted=False, key="device id"),
    KafkaTopicSpec(Topic.UPDATES, partitions=8, compacted=False, key="part id"),
    KafkaTopicSpec(Topic.ASSIGNMENTS, partitions=4, compacted=False, key="device id"),
    KafkaTopicSpec(Topic.ACKS, partitions=4, compacted=False, key="device id"),
    KafkaTopicSpec(Topic.MODEL, partitions=4, compacted=True, key="part id"),
    KafkaTopicSpec(Topic.PROFILES, partitions=4, compacted=True, key="device id"),
    KafkaTopicSpec(Topic.EXPERT_LOAD, partitions=1, compacted=True, key="'load'"),
    KafkaTopicSpec(Topic.ROUNDS, partitions=1, compacted=False, key="'round'"),
    KafkaTopicSpec(Topic.METRICS, partitions=1, compacted=False, key="'metrics'"),
    KafkaTopicSpec(Topic.DEAD_LETTER, partitions=1, compacted=False, key="source topic"),
)


class MqttTopic(StrEnum):
    """MQTT topic patterns under the fleet root; `{device}` and `{part}` are filled in."""

    TELEMETRY = "{root}/{device}/telemetry"  # device → gateway, QoS 1
    STATUS = "{root}/{device}/status"  # device → gateway, QoS 1, retained, also the LWT
    UPDATE = "{root}/{device}/update"  # device → gateway, QoS 1, PUBACK after Kafka ack
    ASSIGNMENT = "{root}/{device}/assignment"  # gateway → device, QoS 1
    ACK = "{root}/{device}/ack"  # gateway → device, QoS 1
    MODEL = "{root}/model/{part}"  # gateway → devices, QoS 1, retained
    # gateway → devices of schema 1.0, QoS 1, retained: an expert's gate row (1.1 devices take
    # every row from the round marker, `RoundClosed.gates`, and do not subscribe).
    GATE = "{root}/gate/{part}"
    ROUND = "{root}/round"  # gateway → devices, QoS 1, retained: the latest RoundClosed


_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
RESERVED_DEVICE_IDS = frozenset({"model", "gate", "+", "#"})


def valid_segment(value: str) -> bool:
    """True when `value` is safe as one MQTT/Kafka name segment (no wildcards, no '/')."""
    return bool(_SEGMENT.fullmatch(value))


@dataclass(frozen=True, slots=True)
class TopicTable:
    """Concrete topic names for one deployment namespace."""

    namespace: str = "fedmoe"
    mqtt_root: str = "fleet"

    def __post_init__(self) -> None:
        if not valid_segment(self.namespace) or not valid_segment(self.mqtt_root):
            raise ValueError(f"bad namespace {self.namespace!r} / root {self.mqtt_root!r}")

    def name(self, topic: Topic) -> str:
        """The Kafka topic name of a logical topic."""
        return f"{self.namespace}.{topic.value}"

    def kafka_specs(self) -> list[tuple[str, KafkaTopicSpec]]:
        """Every Kafka topic as (concrete name, spec): what a launcher creates."""
        return [(self.name(spec.topic), spec) for spec in KAFKA_TOPICS]

    def spec(self, topic: Topic) -> KafkaTopicSpec:
        """The spec of one logical topic."""
        return next(s for s in KAFKA_TOPICS if s.topic is topic)

    def mqtt(self, pattern: MqttTopic, *, device: str = "+", part: str = "+") -> str:
        """An MQTT topic (or filter, with the default '+' wildcards)."""
        return pattern.value.format(root=self.mqtt_root, device=device, part=part)

    def mqtt_device_of(self, topic: str) -> str | None:
        """The device id in `{root}/{device}/...`, or None when the topic is not a device's."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != self.mqtt_root or parts[1] in RESERVED_DEVICE_IDS:
            return None
        return parts[1]
