"""Counters of one device and their sums over a fleet (what `fedmoe fleet --stats-file` writes).

updates_sent    distinct (update id, part) published at least once (PUBACKed, or acked by
                the aggregator: a drop can lose the PUBACK of a publish that arrived)
updates_acked   distinct (update id, part) of this run acknowledged "applied"
acks            every UpdateAck received, by status (resends can earn "duplicate")
resends         publishes of an update after its first
rounds_trained  local trainings done
drops           abrupt connection drops (simulated faults)
events          everything else worth a number (see `Event`), incl. dropped inputs
bytes_received  MQTT payload bytes received, by what they carried (`Received`): the downlink
update_bytes_sent  MQTT payload bytes of the updates sent, first sends only: the uplink
assignment_lag_s  wall seconds from a round's open to its assignment's arrival (n, mean, max)

Every counter is O(1) in the number of rounds: a soak of many rounds keeps no per-round lists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from clients.inbound import DropReason


class Received(StrEnum):
    """What a received MQTT payload carried (one byte counter each)."""

    MODEL = "model"  # a whole model part (PartVersion on {root}/model/{part})
    ROUND = "round"  # the round marker with every expert's gate row (RoundClosed)
    CONTROL = "control"  # assignments, acks
    DROPPED = "dropped"  # anything the device dropped


@dataclass
class Lags:
    """A running summary of wall-second lags (count, sum, max)."""

    n: int = 0
    total: float = 0.0
    max: float = 0.0

    def add(self, value: float) -> None:
        """Fold one lag in."""
        self.n += 1
        self.total += value
        self.max = max(self.max, value)

    def merge(self, other: Lags) -> None:
        """Fold another summary in."""
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def as_dict(self) -> dict[str, float]:
        """{n, mean, max}, rounded for JSON."""
        mean = self.total / self.n if self.n else 0.0
        return {"n": self.n, "mean": round(mean, 4), "max": round(self.max, 4)}


class Event(StrEnum):
    """Countable things that happen to a device."""

    TELEMETRY_SENT = "telemetry_sent"  # announced itself available for a round
    UNAVAILABLE = "unavailable"  # not online in a round (scenario availability)
    ROUND_REPEATED = "round_repeated"  # a RoundClosed it had already handled
    MODEL_TIMEOUT = "model_timeout"  # wanted part versions did not arrive in time
    MODEL_OUTDATED = "model_outdated"  # wanted part versions were already replaced
    GATES_MISSING = "gates_missing"  # a round marker without every expert's gate row
    ASSIGNMENT_REPEATED = "assignment_repeated"  # an assignment of a round it already took
    ASSIGNMENT_STALE = "assignment_stale"  # an assignment of a round already closed
    ASSIGNMENT_EMPTY = "assignment_empty"  # an assignment without experts (nothing to train)
    ASSIGNMENT_REFUSED = "assignment_refused"  # arrived while the fleet was stopping
    ACK_UNMATCHED = "ack_unmatched"  # an ack of no update of this run
    UPDATE_ABANDONED = "update_abandoned"  # resends exhausted before every part was acked
    PUBLISH_FAILED = "publish_failed"  # a publish that found no connection in time
    RECONNECTS = "reconnects"  # connections after the first
    REFUSED = "refused"  # the broker refused its credentials (revoked): the device stopped


@dataclass
class DeviceStats:
    """One device's counters (see the module docstring)."""

    sent: set[tuple[str, str]] = field(default_factory=set)
    applied: set[tuple[str, str]] = field(default_factory=set)
    acks: Counter[str] = field(default_factory=Counter)
    resends: int = 0
    rounds_trained: int = 0
    drops: int = 0
    events: Counter[str] = field(default_factory=Counter)
    dropped_inputs: Counter[str] = field(default_factory=Counter)
    bytes_received: Counter[str] = field(default_factory=Counter)
    update_bytes_sent: int = 0
    # Wall seconds from a round's open (the assignment's timestamp) to the assignment's arrival.
    assignment_lags: Lags = field(default_factory=Lags)

    def count(self, event: Event, n: int = 1) -> None:
        """Add `n` to one event counter."""
        self.events[event.value] += n

    def received(self, what: Received, nbytes: int) -> None:
        """Count one received payload of `nbytes` bytes."""
        self.bytes_received[what.value] += nbytes

    def dropped(self, reason: DropReason) -> None:
        """Count one received message dropped for `reason`."""
        self.dropped_inputs[reason.value] += 1

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "updates_sent": len(self.sent),
            "updates_acked": len(self.applied),
            "acks": dict(sorted(self.acks.items())),
            "resends": self.resends,
            "rounds_trained": self.rounds_trained,
            "drops": self.drops,
            "events": {e.value: self.events[e.value] for e in Event},
            "dropped_inputs": {r.value: self.dropped_inputs[r.value] for r in DropReason},
            "bytes_received": {w.value: self.bytes_received[w.value] for w in Received},
            "update_bytes_sent": self.update_bytes_sent,
            "assignment_lag_s": self.assignment_lags.as_dict(),
        }


def totals(stats: Iterable[DeviceStats]) -> dict[str, Any]:
    """The sum of every counter over devices."""
    acks: Counter[str] = Counter()
    events: Counter[str] = Counter()
    lags = Lags()
    dropped: Counter[str] = Counter()
    received: Counter[str] = Counter()
    out: dict[str, Any] = {
        "devices": 0,
        "updates_sent": 0,
        "updates_acked": 0,
        "resends": 0,
        "rounds_trained": 0,
        "drops": 0,
        "update_bytes_sent": 0,
    }
    for s in stats:
        out["devices"] += 1
        out["updates_sent"] += len(s.sent)
        out["updates_acked"] += len(s.applied)
        out["resends"] += s.resends
        out["rounds_trained"] += s.rounds_trained
        out["drops"] += s.drops
        out["update_bytes_sent"] += s.update_bytes_sent
        acks.update(s.acks)
        events.update(s.events)
        dropped.update(s.dropped_inputs)
        received.update(s.bytes_received)
        lags.merge(s.assignment_lags)
    out["acks"] = dict(sorted(acks.items()))
    out["events"] = {e.value: events[e.value] for e in Event}
    out["dropped_inputs"] = {r.value: dropped[r.value] for r in DropReason}
    out["bytes_received"] = {w.value: received[w.value] for w in Received}
    out["assignment_lag_s"] = lags.as_dict()
    return out
