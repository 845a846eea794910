"""Frozen, validated message types. Every message carries the envelope fields.

The codec (`schemas.codec`) turns these into the msgpack envelope
`{"v": [major, minor], "type": TYPE, "id", "device", "round", "ts", "body": {...}}` and back;
`__post_init__` validation runs on both sides, so a decoded message is a valid message.
Tensors are `numpy.ndarray` values (wire: the tensor ExtType of `schemas.tensor`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from schemas.errors import InvalidFieldError
from schemas.limits import (
    CHUNK_BYTES,
    MAX_ASSEMBLED_BYTES,
    MAX_CHUNKS,
    MAX_DEAD_LETTER_ORIGINAL,
    MAX_EXPERTS,
    MAX_ID_CHARS,
    MAX_PARTS,
    MAX_REASON_CHARS,
    MAX_TENSORS_PER_PART,
)
from schemas.topics import valid_segment

UPDATE_STATUSES = frozenset({"applied", "duplicate", "late", "rejected"})
# ProfileSnapshot.pending_outcome: no verdict yet, an update applied, or one late / rejected.
PENDING_OUTCOMES = frozenset({"", "applied", "missed"})
MAX_HANDLED_OFFSETS = 64  # input partitions a ProfileSnapshot records offsets for
# An expert part's gate row: what a device needs of every expert to route its data (its
# routing histogram), while it downloads whole only the experts it was assigned.
GATE_TENSORS = ("gate.weight", "gate.bias")


def gate_row(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The gate row of a part's tensors (`GATE_TENSORS`), empty for a part without one."""
    if not all(name in tensors for name in GATE_TENSORS):
        return {}
    return {name: tensors[name] for name in GATE_TENSORS}


def _check(cond: bool, cls: str, what: str) -> None:
    if not cond:
        raise InvalidFieldError(f"{cls}: {what}")


def _text(x: object, max_len: int) -> bool:
    return isinstance(x, str) and len(x) <= max_len


def _finite(x: float) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def _is_int(x: object) -> bool:
    """An int (not a bool) that msgpack can carry: int64 or uint64 range."""
    return isinstance(x, int) and not isinstance(x, bool) and -(2**63) <= x < 2**64


def valid_part_id(part: str, num_experts: int = MAX_EXPERTS) -> bool:
    """`shared` or `expert-<i>` with 0 <= i < num_experts."""
    if not isinstance(part, str):
        return False
    if part == "shared":
        return True
    if not part.startswith("expert-"):
        return False
    idx = part[len("expert-") :]
    # isascii: str.isdigit() is also true for "²" and other digits int() refuses.
    return (
        0 < len(idx) <= 6
        and idx.isascii()
        and idx.isdigit()
        and str(int(idx)) == idx
        and int(idx) < num_experts
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Envelope fields shared by every message."""

    TYPE: ClassVar[str] = ""

    message_id: str
    device_id: str
    round: int
    timestamp: float

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check(
            isinstance(self.message_id, str)
            and 0 < len(self.message_id) <= MAX_ID_CHARS
            and self.message_id.isascii()
            and self.message_id.isprintable(),
            name,
            "message_id must be 1..128 printable ASCII characters",
        )
        _check(
            isinstance(self.device_id, str) and valid_segment(self.device_id),
            name,
            "device_id must match [A-Za-z0-9_.-]{1,64}",
        )
        _check(_is_int(self.round) and 0 <= self.round < 2**31, name, "round must be 0..2^31")
        _check(_finite(self.timestamp) and self.timestamp >= 0, name, "timestamp must be >= 0")
        self._validate_body()

    def _validate_body(self) -> None:
        """Per-type checks; subclasses override."""


def _check_tensors(name: str, tensors: Mapping[str, np.ndarray], *, finite: bool) -> None:
    _check(isinstance(tensors, Mapping), name, "tensors must be a map")
    _check(0 < len(tensors) <= MAX_TENSORS_PER_PART, name, "1..32 tensors per part")
    for key, arr in tensors.items():
        _check(isinstance(key, str) and 0 < len(key) <= MAX_ID_CHARS, name, "bad tensor name")
        _check(isinstance(arr, np.ndarray), name, f"tensor {key!r} is not an array")
        if finite and arr.dtype.kind == "f":
            _check(bool(np.isfinite(arr).all()), name, f"tensor {key!r} has non-finite values")


def _check_gate_row(name: str, row: Mapping[str, np.ndarray]) -> None:
    """Empty, or exactly `GATE_TENSORS`, finite."""
    _check(isinstance(row, Mapping), name, "a gate row must be a map")
    if row:
        _check(sorted(row) == sorted(GATE_TENSORS), name, f"gate row tensors {sorted(row)[:4]}")
        _check_tensors(name, row, finite=True)


def _check_versions(name: str, versions: Mapping[str, int]) -> None:
    _check(len(versions) <= MAX_PARTS, name, "model_versions too long")
    for k, v in versions.items():
        _check(isinstance(k, str) and valid_part_id(k), name, f"model_versions key {k!r}")
        _check(_is_int(v) and v >= 0, name, f"model_versions[{k!r}] must be an int >= 0")


def _check_data_loss(n: str, data_loss: float, per_part: Mapping[str, float]) -> None:
    """A pre-training loss report: -1 (not measured) or finite >= 0, per part the same."""
    _check(_finite(data_loss) and (data_loss == -1.0 or data_loss >= 0), n, "data_loss")
    _check(len(per_part) <= MAX_EXPERTS, n, "expert_data_loss too long")
    for k, v in per_part.items():
        _check(isinstance(k, str) and valid_part_id(k), n, f"expert_data_loss key {k!r}")
        _check(_finite(v) and v >= 0, n, f"expert_data_loss[{k!r}] must be finite and >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Telemetry(Message):
    """A device's measured capabilities and the routing histogram of its data."""

    TYPE: ClassVar[str] = "telemetry"

    device_type: int
    compute_ms_per_sample: float
    bandwidth_kbps: float
    memory_mb: float
    battery: float
    num_samples: int
    routing_histogram: tuple[float, ...]
    gate_version: int = 0
    # Per trained expert part ("expert-3"): mean local loss of the samples routed to it.
    expert_loss: Mapping[str, float] = field(default_factory=dict)
    # Measured with the histogram, under the current global model (before training): RMS
    # per-sample loss of the device's data (-1 = not measured), and per expert part the same
    # over the samples routed to it.
    data_loss: float = -1.0
    expert_data_loss: Mapping[str, float] = field(default_factory=dict)

    def _validate_body(self) -> None:
        n = "Telemetry"
        _check(_is_int(self.device_type) and 0 <= self.device_type < 256, n, "device_type")
        for attr in ("compute_ms_per_sample", "bandwidth_kbps", "memory_mb"):
            v = getattr(self, attr)
            _check(_finite(v) and v > 0, n, f"{attr} must be finite and > 0")
        _check(_finite(self.battery) and 0 <= self.battery <= 1, n, "battery must be in [0, 1]")
        _check(_is_int(self.num_samples) and self.num_samples >= 0, n, "num_samples >= 0")
        h = self.routing_histogram
        _check(isinstance(h, tuple) and len(h) <= MAX_EXPERTS, n, "routing_histogram length")
        _check(all(_finite(x) and x >= 0 for x in h), n, "routing_histogram values >= 0")
        _check(_is_int(self.gate_version) and self.gate_version >= 0, n, "gate_version >= 0")
        _check(len(self.expert_loss) <= MAX_EXPERTS, n, "expert_loss too long")
        for k, v in self.expert_loss.items():
            _check(isinstance(k, str) and valid_part_id(k), n, f"expert_loss key {k!r}")
            _check(_finite(v) and v >= 0, n, f"expert_loss[{k!r}] must be finite and >= 0")
        _check_data_loss(n, self.data_loss, self.expert_data_loss)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceStatus(Message):
    """Online/offline status; the offline form is also the device's MQTT last will."""

    TYPE: ClassVar[str] = "status"

    online: bool
    reason: str = ""

    def _validate_body(self) -> None:
        _check(isinstance(self.online, bool), "DeviceStatus", "online must be a bool")
        _check(_text(self.reason, MAX_REASON_CHARS), "DeviceStatus", "reason too long")


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment(Message):
    """Which experts a device trains this round, from which part versions, by when."""

    TYPE: ClassVar[str] = "assignment"

    experts: tuple[int, ...]
    deadline: float  # unix time by which the update must have reached the gateway
    model_versions: Mapping[str, int]  # part id -> version the device must train from

    def _validate_body(self) -> None:
        n = "Assignment"
        e = self.experts
        _check(isinstance(e, tuple) and len(e) <= MAX_EXPERTS, n, "experts length")
        _check(all(_is_int(x) and 0 <= x < MAX_EXPERTS for x in e), n, "expert index range")
        _check(list(e) == sorted(set(e)), n, "experts must be sorted and unique")
        _check(_finite(self.deadline) and self.deadline >= 0, n, "deadline")
        _check(len(self.model_versions) <= MAX_PARTS, n, "model_versions too long")
        for k, v in self.model_versions.items():
            _check(isinstance(k, str) and valid_part_id(k), n, f"model_versions key {k!r}")
            _check(_is_int(v) and v >= 0, n, f"model_versions[{k!r}] must be an int >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class PartPayload:
    """One model part's trained weights from one device (not a message on its own).

    `weight` is the aggregation weight: samples routed to the expert (experts) or the device's
    sample count (shared). `loss` is the mean local loss of those samples.
    """

    part: str
    base_version: int
    weight: float
    loss: float
    tensors: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        n = "PartPayload"
        _check(isinstance(self.part, str) and valid_part_id(self.part), n, f"part {self.part!r}")
        _check(_is_int(self.base_version) and self.base_version >= 0, n, "base_version >= 0")
        _check(_finite(self.weight) and self.weight >= 0, n, "weight must be finite and >= 0")
        _check(_finite(self.loss) and self.loss >= 0, n, "loss must be finite and >= 0")
        _check_tensors(n, self.tensors, finite=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelUpdate(Message):
    """A device's whole upload for a round (MQTT); the gateway splits it into PartUpdates."""

    TYPE: ClassVar[str] = "update"

    num_samples: int
    train_seconds: float
    parts: tuple[PartPayload, ...]

    def _validate_body(self) -> None:
        n = "ModelUpdate"
        _check(_is_int(self.num_samples) and self.num_samples >= 0, n, "num_samples >= 0")
        _check(_finite(self.train_seconds) and self.train_seconds >= 0, n, "train_seconds")
        _check(isinstance(self.parts, tuple) and 0 < len(self.parts) <= MAX_PARTS, n, "parts")
        _check(all(isinstance(p, PartPayload) for p in self.parts), n, "parts must be payloads")
        names = [p.part for p in self.parts]
        _check(len(names) == len(set(names)), n, "duplicate part in update")


@dataclass(frozen=True, slots=True, kw_only=True)
class PartUpdate(Message):
    """One part of a device's update, as the aggregator consumes it (Kafka key = part id).

    `message_id` is `f"{update_id}/{part}"`, so re-splitting a redelivered update is idempotent.
    """

    TYPE: ClassVar[str] = "part-update"

    update_id: str
    parts_total: int
    num_samples: int
    payload: PartPayload

    def _validate_body(self) -> None:
        n = "PartUpdate"
        _check(isinstance(self.payload, PartPayload), n, "payload must be a PartPayload")
        _check(
            isinstance(self.update_id, str) and 0 < len(self.update_id) <= MAX_ID_CHARS,
            n,
            "update_id length",
        )
        _check(_is_int(self.parts_total) and 0 < self.parts_total <= MAX_PARTS, n, "parts_total")
        _check(_is_int(self.num_samples) and self.num_samples >= 0, n, "num_samples >= 0")


def split_update(update: ModelUpdate) -> tuple[PartUpdate, ...]:
    """One `PartUpdate` per part (message id `{update_id}/{part}`): what the gateway produces
    for the aggregator, and what a device sends in chunks when its update is too large for one
    message (`schemas.chunks`). Raises `SchemaError`."""
    total = len(update.parts)
    return tuple(
        PartUpdate(
            message_id=f"{update.message_id}/{part.part}",
            device_id=update.device_id,
            round=update.round,
            timestamp=update.timestamp,
            update_id=update.message_id,
            parts_total=total,
            num_samples=update.num_samples,
            payload=part,
        )
        for part in update.parts
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PartVersion(Message):
    """A new global version of one model part (Kafka `model`, key = part id; MQTT retained)."""

    TYPE: ClassVar[str] = "part-version"

    part: str
    version: int
    layout_version: int
    tensors: Mapping[str, np.ndarray]
    contributors: int = 0
    samples: float = 0.0

    def _validate_body(self) -> None:
        n = "PartVersion"
        _check(isinstance(self.part, str) and valid_part_id(self.part), n, f"part {self.part!r}")
        _check(_is_int(self.version) and self.version >= 0, n, "version >= 0")
        _check(_is_int(self.layout_version) and self.layout_version >= 0, n, "layout_version")
        _check(_is_int(self.contributors) and self.contributors >= 0, n, "contributors >= 0")
        _check(_finite(self.samples) and self.samples >= 0, n, "samples >= 0")
        _check_tensors(n, self.tensors, finite=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateAck(Message):
    """The aggregator's verdict on one part of one update (`device_id` = the update's device)."""

    TYPE: ClassVar[str] = "ack"

    update_id: str
    part: str
    status: str  # one of UPDATE_STATUSES
    reason: str = ""

    def _validate_body(self) -> None:
        n = "UpdateAck"
        _check(_text(self.update_id, MAX_ID_CHARS) and self.update_id != "", n, "update_id length")
        _check(valid_part_id(self.part), n, f"part {self.part!r}")
        _check(isinstance(self.status, str) and self.status in UPDATE_STATUSES, n, "status")
        _check(_text(self.reason, MAX_REASON_CHARS), n, "reason too long")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpertLoad(Message):
    """Global per-expert load (Kafka `expert-load`, compacted)."""

    TYPE: ClassVar[str] = "expert-load"

    assigned_clients: tuple[int, ...]
    accepted_updates: tuple[int, ...]
    samples_routed: tuple[float, ...]
    rounds_since_update: tuple[int, ...]
    cv: float
    max_mean: float
    clients_ewma: tuple[float, ...] = ()  # EWMA over closed rounds of clients per expert
    rounds_closed: int = 0

    def _validate_body(self) -> None:
        n = "ExpertLoad"
        cols = (
            self.assigned_clients,
            self.accepted_updates,
            self.samples_routed,
            self.rounds_since_update,
        )
        _check(len({len(c) for c in cols}) == 1, n, "per-expert columns differ in length")
        _check(0 < len(self.assigned_clients) <= MAX_EXPERTS, n, "experts count")
        _check(all(_finite(x) and x >= 0 for c in cols for x in c), n, "values must be >= 0")
        _check(_finite(self.cv) and self.cv >= 0, n, "cv")
        _check(_finite(self.max_mean) and self.max_mean >= 0, n, "max_mean")
        ewma = self.clients_ewma
        _check(len(ewma) in (0, len(self.assigned_clients)), n, "clients_ewma length")
        _check(all(_finite(x) and x >= 0 for x in ewma), n, "clients_ewma values >= 0")
        _check(_is_int(self.rounds_closed) and self.rounds_closed >= 0, n, "rounds_closed >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSnapshot(Message):
    """A device's folded `ClientProfile` (Kafka `profiles`, compacted, key = device id)."""

    TYPE: ClassVar[str] = "profile"

    device_type: int
    compute_ms_per_sample: float
    bandwidth_kbps: float
    memory_mb: float
    capacity: int  # k_c
    battery: float
    online: bool
    num_samples: int
    completion_rate: float
    rounds_assigned: int
    rounds_completed: int
    last_seen: float
    routing_histogram: tuple[float, ...]
    expert_quality: Mapping[str, float] = field(default_factory=dict)  # Q(c, e) by part id
    expert_trials: Mapping[str, int] = field(default_factory=dict)  # rounds tried, by part id
    last_round: int = -1  # latest round the device was assigned work in (-1 = never)
    data_loss: float = -1.0  # latest reported RMS loss under the global model (-1 = never)
    expert_data_loss: Mapping[str, float] = field(default_factory=dict)  # the same, per part
    # The profiler's own bookkeeping: this topic is its changelog, so what it needs after a
    # restart travels here. The assigned round whose outcome is not folded yet (-1 = none) and
    # the verdict heard for it so far; the round of the last telemetry folded (one per round);
    # the last input offset handled per "topic/partition" (redelivery dedup).
    pending_round: int = -1
    pending_outcome: str = ""  # one of PENDING_OUTCOMES
    telemetry_round: int = -1
    handled_offsets: Mapping[str, int] = field(default_factory=dict)

    def _validate_body(self) -> None:
        n = "ProfileSnapshot"
        _check(_is_int(self.device_type) and 0 <= self.device_type < 256, n, "device_type")
        for attr in ("compute_ms_per_sample", "bandwidth_kbps", "memory_mb"):
            v = getattr(self, attr)
            _check(_finite(v) and v > 0, n, f"{attr} must be finite and > 0")
        _check(_is_int(self.capacity) and 0 <= self.capacity <= MAX_EXPERTS, n, "capacity")
        _check(_finite(self.battery) and 0 <= self.battery <= 1, n, "battery in [0, 1]")
        _check(_finite(self.completion_rate) and 0 <= self.completion_rate <= 1, n, "completion")
        _check(isinstance(self.online, bool), n, "online must be a bool")
        for attr in ("num_samples", "rounds_assigned", "rounds_completed"):
            _check(_is_int(getattr(self, attr)) and getattr(self, attr) >= 0, n, f"{attr} >= 0")
        _check(_finite(self.last_seen) and self.last_seen >= 0, n, "last_seen must be >= 0")
        h = self.routing_histogram
        _check(isinstance(h, tuple) and len(h) <= MAX_EXPERTS, n, "routing_histogram length")
        _check(all(_finite(x) and x >= 0 for x in h), n, "routing_histogram values >= 0")
        _check(len(self.expert_quality) <= MAX_EXPERTS, n, "expert_quality too long")
        for k, v in self.expert_quality.items():
            _check(valid_part_id(k) and _finite(v), n, f"expert_quality[{k!r}]")
        _check(len(self.expert_trials) <= MAX_EXPERTS, n, "expert_trials too long")
        for k, t in self.expert_trials.items():
            _check(valid_part_id(k) and _is_int(t) and t >= 0, n, f"expert_trials[{k!r}]")
        _check(_is_int(self.last_round) and -1 <= self.last_round < 2**31, n, "last_round")
        _check_data_loss(n, self.data_loss, self.expert_data_loss)
        for attr in ("pending_round", "telemetry_round"):
            v = getattr(self, attr)
            _check(_is_int(v) and -1 <= v < 2**31, n, f"{attr} must be -1..2^31")
        _check(self.pending_outcome in PENDING_OUTCOMES, n, "pending_outcome")
        offsets = self.handled_offsets
        _check(len(offsets) <= MAX_HANDLED_OFFSETS, n, "handled_offsets too long")
        for k, o in offsets.items():
            _check(_text(k, MAX_ID_CHARS) and k != "", n, "handled_offsets key")
            _check(_is_int(o) and 0 <= o < 2**63, n, f"handled_offsets[{k!r}] must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundOpened(Message):
    """The matcher opened a round (`device_id` = "matcher")."""

    TYPE: ClassVar[str] = "round-opened"

    deadline: float
    strategy: str
    devices: int
    expected_parts: Mapping[str, int]  # part id -> devices assigned to it (quorum basis)
    model_versions: Mapping[str, int]
    # On a part's marker (Kafka `updates`, key = part id) only: the devices assigned that part,
    # each with the samples its profile holds (the aggregator's weight cap). Empty on `rounds`.
    assigned: Mapping[str, int] = field(default_factory=dict)

    def _validate_body(self) -> None:
        n = "RoundOpened"
        _check(_finite(self.deadline), n, "deadline")
        _check(_is_int(self.devices) and self.devices >= 0, n, "devices >= 0")
        _check(_text(self.strategy, MAX_REASON_CHARS), n, "strategy too long")
        _check(len(self.expected_parts) <= MAX_PARTS, n, "expected_parts too long")
        for k, v in self.expected_parts.items():
            _check(valid_part_id(k) and _is_int(v) and v >= 0, n, f"expected_parts[{k!r}]")
        _check_versions(n, self.model_versions)
        for k, v in self.assigned.items():
            _check(isinstance(k, str) and valid_segment(k), n, f"assigned key {k!r}")
            _check(_is_int(v) and v >= 0, n, f"assigned[{k!r}] must be an int >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class PartClosed(Message):
    """The aggregator closed one part of a round and published `version` of it; `gate` is
    that version's gate row (an expert's; empty for ``shared``), which the matcher passes on
    to the devices in `RoundClosed.gates`."""

    TYPE: ClassVar[str] = "part-closed"

    part: str
    version: int
    applied: int
    reason: str  # "quorum" or "deadline"
    gate: Mapping[str, np.ndarray] = field(default_factory=dict)

    def _validate_body(self) -> None:
        n = "PartClosed"
        _check(valid_part_id(self.part), n, f"part {self.part!r}")
        _check(_is_int(self.version) and self.version >= 0, n, "version")
        _check(_is_int(self.applied) and self.applied >= 0, n, "applied")
        _check(self.reason in {"quorum", "deadline"}, n, f"reason {self.reason!r}")
        _check_gate_row(n, self.gate)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundClosed(Message):
    """The matcher closed a round (every expected part closed, or the deadline passed).

    `gates` carries every expert's gate row at its version in `model_versions`: the devices
    route their data with all of them, and one message a round instead of one per expert is
    what a fleet of thousands can afford (`docs/performance.md`). `last`: no round opens after
    this one (the matcher's `max_rounds`), so devices announce none.
    """

    TYPE: ClassVar[str] = "round-closed"

    reason: str
    parts_closed: int
    model_versions: Mapping[str, int] = field(default_factory=dict)  # every part after the round
    gates: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    last: bool = False

    def _validate_body(self) -> None:
        n = "RoundClosed"
        _check(isinstance(self.last, bool), n, "last must be a bool")
        _check(_text(self.reason, MAX_REASON_CHARS), n, "reason too long")
        _check(_is_int(self.parts_closed) and self.parts_closed >= 0, n, "parts_closed >= 0")
        _check_versions(n, self.model_versions)
        _check(len(self.gates) <= MAX_PARTS, n, "gates too long")
        for part, row in self.gates.items():
            _check(part in self.model_versions, n, f"gates[{part!r}] has no version")
            _check(bool(row), n, f"gates[{part!r}] is empty")
            _check_gate_row(n, row)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalMetrics(Message):
    """The evaluator's score of the current global model."""

    TYPE: ClassVar[str] = "metrics"

    accuracy: float
    loss: float
    model_versions: Mapping[str, int]

    def _validate_body(self) -> None:
        _check(_finite(self.accuracy) and 0 <= self.accuracy <= 1, "EvalMetrics", "accuracy")
        _check(_finite(self.loss), "EvalMetrics", "loss")
        _check_versions("EvalMetrics", self.model_versions)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter(Message):
    """A rejected input: the original bytes (capped), where it came from, and why."""

    TYPE: ClassVar[str] = "dead-letter"

    source: str  # topic it was read from
    reason: str
    error: str  # the error class name, e.g. "OversizeError"
    original: bytes
    original_size: int

    def _validate_body(self) -> None:
        n = "DeadLetter"
        _check(isinstance(self.original, bytes), n, "original must be bytes")
        _check(
            len(self.original) <= MAX_DEAD_LETTER_ORIGINAL,
            n,
            f"original must be capped to {MAX_DEAD_LETTER_ORIGINAL} bytes",
        )
        _check(
            _is_int(self.original_size) and self.original_size >= len(self.original),
            n,
            "original_size must be >= len(original)",
        )
        _check(_text(self.reason, 4 * MAX_REASON_CHARS), n, "reason too long")
        _check(_text(self.source, 4 * MAX_REASON_CHARS), n, "source too long")
        _check(_text(self.error, MAX_REASON_CHARS), n, "error too long")


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageChunk(Message):
    """Bytes `[index × chunk_bytes, …)` of a message too large for one record.

    The whole is another message's encoding (`schemas.chunks`): `whole_type` its type,
    `whole_id` its message id, `digest` the SHA-256 of its `whole_bytes` bytes. The envelope's
    device and round are the whole's; the message id is `{whole_id}#{index}`, so a resent chunk
    is recognised. `key` is the whole's Kafka key (a part id for updates and model versions):
    every chunk of a whole goes to the same partition, in order.
    """

    TYPE: ClassVar[str] = "chunk"

    whole_id: str
    whole_type: str
    key: str
    index: int
    count: int
    chunk_bytes: int
    whole_bytes: int
    digest: bytes
    data: bytes

    def _validate_body(self) -> None:
        n = "MessageChunk"
        _check(_text(self.whole_id, MAX_ID_CHARS - 8) and bool(self.whole_id), n, "whole_id")
        _check(_text(self.whole_type, 64) and bool(self.whole_type), n, "whole_type")
        _check(_text(self.key, MAX_ID_CHARS), n, "key too long")
        _check(
            _is_int(self.chunk_bytes) and 0 < self.chunk_bytes <= CHUNK_BYTES,
            n,
            f"chunk_bytes must be 1..{CHUNK_BYTES}",
        )
        _check(
            _is_int(self.whole_bytes) and 0 < self.whole_bytes <= MAX_ASSEMBLED_BYTES,
            n,
            f"whole_bytes must be 1..{MAX_ASSEMBLED_BYTES}",
        )
        expected_count = -(-self.whole_bytes // self.chunk_bytes)
        _check(
            _is_int(self.count) and self.count == expected_count and self.count <= MAX_CHUNKS,
            n,
            f"count must be ceil(whole_bytes / chunk_bytes) <= {MAX_CHUNKS}",
        )
        _check(_is_int(self.index) and 0 <= self.index < self.count, n, "index out of range")
        _check(self.message_id == f"{self.whole_id}#{self.index}", n, "message_id")
        _check(isinstance(self.digest, bytes) and len(self.digest) == 32, n, "digest: 32 bytes")
        _check(isinstance(self.data, bytes), n, "data must be bytes")
        last = self.whole_bytes - (self.count - 1) * self.chunk_bytes
        size = last if self.index == self.count - 1 else self.chunk_bytes
        _check(len(self.data) == size, n, f"chunk {self.index} must hold {size} bytes")

    @property
    def start(self) -> int:
        """Where `data` starts in the whole."""
        return self.index * self.chunk_bytes


MESSAGE_TYPES: tuple[type[Message], ...] = (
    Telemetry,
    DeviceStatus,
    Assignment,
    ModelUpdate,
    PartUpdate,
    PartVersion,
    UpdateAck,
    ExpertLoad,
    ProfileSnapshot,
    RoundOpened,
    PartClosed,
    RoundClosed,
    EvalMetrics,
    DeadLetter,
    MessageChunk,
)
