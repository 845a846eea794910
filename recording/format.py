"""The recording format: one Parquet row per message seen on the bus.

| column | type | what |
|---|---|---|
| `t_ns` | int64 | arrival time at the recorder, ns since the Unix epoch |
| `source` | string | `mqtt` or `kafka` |
| `topic` | string | the concrete MQTT topic or Kafka topic name |
| `key` | binary? | Kafka record key (null for MQTT) |
| `partition`, `offset` | int32?, int64? | Kafka partition / offset (null for MQTT) |
| `qos`, `retain` | int8?, bool? | MQTT QoS and retain flag (null for Kafka) |
| `payload` | binary | the message bytes, untouched |
| `type`, `device`, `round`, `message_id` | string?, int64? | envelope fields (null: no decode) |

The file's key-value metadata holds `fedmoe.recording` (this format's version) and anything the
recorder was told (`fedmoe.scenario`: the run's `FEDMOE_SCENARIO_*` as JSON, the MQTT root and
Kafka namespace), so a recording says what it is without this project.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

from schemas import decode
from schemas.errors import SchemaError

FORMAT_VERSION: Final = "1"
META_VERSION: Final = b"fedmoe.recording"
META_INFO: Final = b"fedmoe.info"  # JSON: scenario, namespace, mqtt root, what was tapped

MQTT: Final = "mqtt"
KAFKA: Final = "kafka"

SCHEMA: Final = pa.schema(
    [
        pa.field("t_ns", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("key", pa.binary()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("qos", pa.int8()),
        pa.field("retain", pa.bool_()),
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("type", pa.string()),
        pa.field("device", pa.string()),
        pa.field("round", pa.int64()),
        pa.field("message_id", pa.string()),
    ]
)
COLUMNS: Final = tuple(SCHEMA.names)
# Low-cardinality columns are dictionary-encoded; payloads and ids are not (no gain).
DICTIONARY_COLUMNS: Final = ("source", "topic", "type", "device")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The envelope fields of a payload, or Nones when it does not decode."""

    type: str | None = None
    device: str | None = None
    round: int | None = None
    message_id: str | None = None


def peek(payload: bytes) -> Envelope:
    """The envelope of `payload` through the codec (every check it makes); empty on failure."""
    try:
        m = decode(payload)
    except SchemaError:
        return Envelope()
    return Envelope(type(m).TYPE, m.device_id, m.round, m.message_id)


@dataclass(frozen=True, slots=True)
class Record:
    """One recorded message (a row). Kafka fields are None for MQTT and the other way round."""

    t_ns: int
    source: str
    topic: str
    payload: bytes
    key: bytes | None = None
    partition: int | None = None
    offset: int | None = None
    qos: int | None = None
    retain: bool | None = None
    type: str | None = None
    device: str | None = None
    round: int | None = None
    message_id: str | None = None

    @classmethod
    def observed(
        cls,
        t_ns: int,
        source: str,
        topic: str,
        payload: bytes,
        **transport: Any,
    ) -> Record:
        """A record of `payload` as it arrived, its envelope decoded beside it."""
        env = peek(payload)
        return cls(
            t_ns,
            source,
            topic,
            payload,
            type=env.type,
            device=env.device,
            round=env.round,
            message_id=env.message_id,
            **transport,
        )

    @property
    def size(self) -> int:
        """Bytes this record holds (payload, topic and key): the buffer's measure."""
        return len(self.payload) + len(self.topic) + len(self.key or b"") + 64


def to_table(records: Sequence[Record]) -> pa.Table:
    """Records as one Arrow table of `SCHEMA`."""
    columns = {name: [getattr(r, name) for r in records] for name in COLUMNS}
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def from_rows(rows: Mapping[str, Sequence[Any]]) -> list[Record]:
    """Records from columns (as `pyarrow.Table.to_pydict()` gives them)."""
    n = len(rows["t_ns"])
    return [Record(**{name: rows[name][i] for name in COLUMNS}) for i in range(n)]


def info_metadata(info: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The file metadata of a recording that carries `info`."""
    return {META_VERSION: FORMAT_VERSION.encode(), META_INFO: json.dumps(dict(info)).encode()}
