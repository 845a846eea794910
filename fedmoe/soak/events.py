"""What the soak observes, as one stream of plain events (pure data; `t` is seconds since the
soak's start on the wall clock). `watch` turns Kafka records, the fleet's journals, /metrics
scrapes and Mosquitto's `$SYS` into these; `invariants` folds them."""

from __future__ import annotations

from dataclasses import dataclass

UpdateKey = tuple[str, str]  # (update id, part)


@dataclass(frozen=True)
class Sent:
    """A device published an update's part (its journal)."""

    t: float
    key: UpdateKey


@dataclass(frozen=True)
class DeviceAcked:
    """A device received an "applied" UpdateAck for an update's part (its journal)."""

    t: float
    key: UpdateKey


@dataclass(frozen=True)
class Verdict:
    """An aggregator's UpdateAck on Kafka."""

    t: float
    key: UpdateKey
    device: str
    round: int
    status: str


@dataclass(frozen=True)
class PartClosedSeen:
    """An aggregator closed a part of a round with `applied` updates in it."""

    t: float
    round: int
    part: str
    applied: int


@dataclass(frozen=True)
class RoundOpenedSeen:
    """The matcher opened a round whose deadline is at `deadline_t`."""

    t: float
    round: int
    deadline_t: float


@dataclass(frozen=True)
class RoundClosedSeen:
    """The matcher closed a round."""

    t: float
    round: int


@dataclass(frozen=True)
class Online:
    """Devices connected over the whole fleet."""

    t: float
    devices: int


@dataclass(frozen=True)
class LagSample:
    """A service process's largest partition lag, from its /metrics."""

    t: float
    service: str
    process: str
    lag: int


@dataclass(frozen=True)
class RssSample:
    """A service process's resident memory, from its /metrics."""

    t: float
    service: str
    pid: int
    mb: float


@dataclass(frozen=True)
class Dropped:
    """Mosquitto's `$SYS/broker/publish/messages/dropped` (since the broker's start)."""

    t: float
    count: int


SoakEvent = (
    Sent
    | DeviceAcked
    | Verdict
    | PartClosedSeen
    | RoundOpenedSeen
    | RoundClosedSeen
    | Online
    | LagSample
    | RssSample
    | Dropped
)
