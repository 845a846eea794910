"""Wire contracts: envelope, message types, tensor codec, topic table and limits (pure).

    data = schemas.encode(message)          # bytes, at most MAX_MESSAGE_BYTES
    message = schemas.decode(data)          # or raises a schemas.SchemaError subclass
    update = schemas.decode_as(data, schemas.ModelUpdate)

This package imports nothing of the project except `fedmoe.errors`.
"""

from __future__ import annotations

from schemas.codec import SCHEMA_VERSION, decode, decode_as, encode
from schemas.errors import (
    InvalidFieldError,
    MalformedError,
    OversizeError,
    SchemaError,
    TensorError,
    UnexpectedMessageTypeError,
    UnknownMessageTypeError,
    UnsupportedVersionError,
)
from schemas.messages import (
    MESSAGE_TYPES,
    UPDATE_STATUSES,
    Assignment,
    DeadLetter,
    DeviceStatus,
    EvalMetrics,
    ExpertLoad,
    Message,
    MessageChunk,
    ModelUpdate,
    PartClosed,
    PartPayload,
    PartUpdate,
    PartVersion,
    ProfileSnapshot,
    RoundClosed,
    RoundOpened,
    Telemetry,
    UpdateAck,
    valid_part_id,
)
from schemas.tensor import ALLOWED_DTYPES, TENSOR_EXT_CODE, pack_tensor, unpack_tensor
from schemas.topics import KAFKA_TOPICS, KafkaTopicSpec, MqttTopic, Topic, TopicTable

__all__ = [
    "ALLOWED_DTYPES",
    "KAFKA_TOPICS",
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "TENSOR_EXT_CODE",
    "UPDATE_STATUSES",
    "Assignment",
    "DeadLetter",
    "DeviceStatus",
    "EvalMetrics",
    "ExpertLoad",
    "InvalidFieldError",
    "KafkaTopicSpec",
    "MalformedError",
    "Message",
    "MessageChunk",
    "ModelUpdate",
    "MqttTopic",
    "OversizeError",
    "PartClosed",
    "PartPayload",
    "PartUpdate",
    "PartVersion",
    "ProfileSnapshot",
    "RoundClosed",
    "RoundOpened",
    "SchemaError",
    "Telemetry",
    "TensorError",
    "Topic",
    "TopicTable",
    "UnexpectedMessageTypeError",
    "UnknownMessageTypeError",
    "UnsupportedVersionError",
    "UpdateAck",
    "decode",
    "decode_as",
    "encode",
    "pack_tensor",
    "unpack_tensor",
    "valid_part_id",
]
