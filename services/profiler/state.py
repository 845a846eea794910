"""The profiler's per-device state machine, pure: no broker, no clock, no I/O.

A `DeviceState` is a device's `ClientProfile` plus the profiler's bookkeeping; `step` folds one
input record into it and says whether anything changed (then the app publishes a snapshot):

    Telemetry(r)      fold_telemetry, once per round r (a second telemetry of r is a duplicate);
                      first folds the outcome of a pending round < r, with this telemetry's
                      expert losses (a device reports each training's losses once, in its first
                      telemetry after it: they are that round's if it trained in it, late or
                      not, and none if it did not)
    DeviceStatus      fold_status (applied whatever its round: the MQTT last will carries the
                      round the device connected in); an offline status of round r moves the
                      snapshot's round to r, an online one does not: a device announces itself
                      for a round with its telemetry (and "online" just before when it was
                      offline), so the matcher never takes a profile whose telemetry of that
                      round is not folded yet; a device without a profile: dropped and counted
                      (a status carries no capabilities, and the first telemetry makes a device
                      online anyway)
    Assignment(r)     round r is pending; a pending round < r is folded first (no losses)
    UpdateAck(r)      the verdict of pending round r: "applied" → completed in time unless a part
                      was "late" / "rejected" ("missed" sticks); "duplicate" says nothing new.
                      One ack per part arrives, the round is still folded once. An ack of a
                      round whose Assignment was not read yet (the topics are read
                      independently) makes r pending itself.

`fold_round_outcome` runs exactly once per assigned round: the pending round is cleared when it
is folded and any assignment or ack of a round ≤ `ClientProfile.last_round` (folded) or below the
pending round is stale. Why fold at the next telemetry rather than at the ack: a device reports
the losses of round r's training in its telemetry of round r + 1, and the in-process simulation
folds round r's outcome with round r's losses; folding at the ack would pair them with round
r − 1's. The losses are folded whatever the verdict, as the simulation folds them for every
device that trained: a device so slow that it uploads after the round closed announces the next
round before its verdict exists (its round is then right as not completed, and its late ack is
counted `stale`), and one that dropped out or never got its model reports no losses (it has
none it did not report yet). Known limit: a verdict read after the telemetry of the next round
finds its round folded as not completed, and is counted `stale`: topics are read independently
(the acks partition lagging, e.g. in a backlog after a restart). Within one fetch the runtime
hands records out in production order (`brokers.kafka.in_production_order`), so an ack produced
before the telemetry is folded first; without that, one 5-round e2e demo read a device's
telemetry before its acks (3 stale verdicts, parity with the simulation lost).

Redelivery: `handled` keeps the last handled offset per input "topic/partition"; a record at or
below it was folded already (its effect is in the changelog) and changes nothing. One device's
records are all in one partition of each input (key = device id), so one offset per input
topic is enough.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from moe.profiles import ClientProfile, fold_round_outcome, fold_status, fold_telemetry
from moe.wire import (
    client_profile,
    data_losses,
    expert_losses,
    profile_snapshot,
    telemetry_reading,
)
from schemas.messages import Assignment, DeviceStatus, ProfileSnapshot, Telemetry, UpdateAck

ProfilerInput = Telemetry | DeviceStatus | Assignment | UpdateAck

APPLIED = "applied"
MISSED = "missed"


class Note(StrEnum):
    """What one record did (one counter each in the app)."""

    TELEMETRY = "telemetry_folded"
    STATUS = "status_folded"
    ASSIGNED = "round_assigned"
    VERDICT = "verdict_recorded"
    OUTCOME = "outcome_folded"  # fold_round_outcome ran (counted apart from the record's note)
    NO_CHANGE = "no_change"  # e.g. the second ack of a round, a duplicate ack, an empty assignment
    STALE = "stale"  # telemetry of a folded round, assignment or ack of a folded round
    REDELIVERED = "redelivered"  # offset already handled (a redelivery after a crash)
    UNKNOWN_DEVICE = "unknown_device"  # status, assignment or ack of a device without a profile


@dataclass(frozen=True, slots=True)
class FoldParams:
    """The knobs of the folds (defaults: the ones `moe.profiles` and the simulation use)."""

    telemetry_alpha: float = 0.3
    outcome_alpha: float = 0.3
    loss_beta: float = 1.0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device's profile and the profiler's bookkeeping for it.

    Attributes:
        profile: the folded profile.
        round: the round of the device's latest telemetry or offline status (the snapshot's
            envelope round: the matcher's candidates for round r are the online profiles at r).
        pending_round: the assigned round whose outcome is not folded yet (-1 = none).
        pending_outcome: "" (no verdict yet), "applied" or "missed".
        telemetry_round: the round of the last telemetry folded (-1 = none).
        handled: last handled offset per input "topic/partition".
    """

    profile: ClientProfile
    round: int
    pending_round: int = -1
    pending_outcome: str = ""
    telemetry_round: int = -1
    handled: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def device_id(self) -> str:
        """The device."""
        return self.profile.device_id

    def newer_than(self, other: DeviceState) -> bool:
        """True when this state has handled an input record `other` has not.

        Only one profiler instance owns a device's partitions at a time, and offsets only grow,
        so of two states of one device the one that handled more is the later one.
        """
        return any(off > other.handled.get(src, -1) for src, off in self.handled.items())


@dataclass(frozen=True, slots=True)
class Step:
    """The result of one record: the new state (None: still no profile), what it did."""

    state: DeviceState | None
    changed: bool
    note: Note
    outcome_folded: bool = False


def step(
    state: DeviceState | None,
    message: ProfilerInput,
    *,
    source: str,
    offset: int,
    now: float,
    params: FoldParams = FoldParams(),
) -> Step:
    """Fold one input record of a device into its state.

    Args:
        state: the device's state, None when it has no profile yet.
        message: the record's message (its `device_id` is the device).
        source: the input "topic/partition" the record came from.
        offset: its offset there.
        now: its arrival time (s): `last_seen`.
        params: EWMA weights and the loss scale.

    Raises:
        ValueError: the message carries values the domain refuses (→ dead letter).
    """
    if state is not None and state.handled.get(source, -1) >= offset:
        return Step(state, changed=False, note=Note.REDELIVERED)
    if isinstance(message, Telemetry):
        result = _on_telemetry(state, message, now, params)
    elif state is None:
        return Step(None, changed=False, note=Note.UNKNOWN_DEVICE)
    elif isinstance(message, DeviceStatus):
        profile = fold_status(state.profile, online=message.online, now=now)
        announced = state.round if message.online else max(state.round, message.round)
        new = replace(state, profile=profile, round=announced)
        result = Step(new, changed=new != state, note=Note.STATUS)
    elif isinstance(message, Assignment):
        result = _on_assignment(state, message, params)
    else:
        result = _on_ack(state, message, params)
    if result.state is None:
        return result
    handled = MappingProxyType({**result.state.handled, source: offset})
    return replace(result, state=replace(result.state, handled=handled))


def _fold_pending(state: DeviceState, message: Telemetry | None, params: FoldParams) -> DeviceState:
    data_loss, expert_data_loss = data_losses(message) if message is not None else (None, {})
    profile = fold_round_outcome(
        state.profile,
        round=state.pending_round,
        assigned=True,
        completed_in_time=state.pending_outcome == APPLIED,
        expert_losses=expert_losses(message) if message is not None else {},
        data_loss=data_loss,
        expert_data_loss=expert_data_loss,
        alpha=params.outcome_alpha,
        beta=params.loss_beta,
    )
    return replace(state, profile=profile, pending_round=-1, pending_outcome="")


def _on_telemetry(
    state: DeviceState | None, message: Telemetry, now: float, params: FoldParams
) -> Step:
    if state is not None and message.round <= state.telemetry_round:
        return Step(state, changed=False, note=Note.STALE)
    reading = telemetry_reading(message)
    folded = False
    if state is not None and 0 <= state.pending_round < message.round:
        # This telemetry's losses are the pending round's: a device reports a training's
        # losses once, and it trains in every round it is assigned (none when it could not).
        state = _fold_pending(state, message, params)
        folded = True
    profile = fold_telemetry(
        state.profile if state is not None else None,
        reading,
        now=now,
        alpha=params.telemetry_alpha,
    )
    if state is None:
        new = DeviceState(profile, round=message.round, telemetry_round=message.round)
    else:
        new = replace(
            state,
            profile=profile,
            round=max(state.round, message.round),
            telemetry_round=message.round,
        )
    return Step(new, changed=True, note=Note.TELEMETRY, outcome_folded=folded)


def _is_stale(state: DeviceState, round_: int) -> bool:
    return round_ <= state.profile.last_round or round_ < state.pending_round


def _on_assignment(state: DeviceState, message: Assignment, params: FoldParams) -> Step:
    r = message.round
    if _is_stale(state, r):
        return Step(state, changed=False, note=Note.STALE)
    if r == state.pending_round or not message.experts:
        return Step(state, changed=False, note=Note.NO_CHANGE)  # redone, or nothing to train
    folded = state.pending_round >= 0
    if folded:
        state = _fold_pending(state, None, params)
    new = replace(state, pending_round=r, pending_outcome="")
    return Step(new, changed=True, note=Note.ASSIGNED, outcome_folded=folded)


def _verdict(current: str, status: str) -> str:
    if status == APPLIED:
        return current or APPLIED  # "missed" sticks: a late or rejected part spoils the round
    if status in ("late", "rejected"):
        return MISSED
    return current  # "duplicate": a re-ack of a part already judged


def _on_ack(state: DeviceState, message: UpdateAck, params: FoldParams) -> Step:
    r = message.round
    if _is_stale(state, r):
        return Step(state, changed=False, note=Note.STALE)
    current, folded = state, False
    if r > current.pending_round:
        # The verdict was read before the assignment (another topic): r was assigned.
        folded = current.pending_round >= 0
        if folded:
            current = _fold_pending(current, None, params)
        current = replace(current, pending_round=r, pending_outcome="")
    new = replace(current, pending_outcome=_verdict(current.pending_outcome, message.status))
    if new == state:
        return Step(state, changed=False, note=Note.NO_CHANGE)
    return Step(new, changed=True, note=Note.VERDICT, outcome_folded=folded)


def to_snapshot(state: DeviceState, *, message_id: str, timestamp: float) -> ProfileSnapshot:
    """The wire form of a device's state (Kafka `profiles`, key = device id)."""
    snapshot = profile_snapshot(
        state.profile, message_id=message_id, timestamp=timestamp, round=state.round
    )
    return replace(
        snapshot,
        pending_round=state.pending_round,
        pending_outcome=state.pending_outcome,
        telemetry_round=state.telemetry_round,
        handled_offsets=dict(state.handled),
    )


def from_snapshot(snapshot: ProfileSnapshot) -> DeviceState:
    """A device's state from its latest snapshot (inverse of `to_snapshot`)."""
    return DeviceState(
        profile=client_profile(snapshot),
        round=snapshot.round,
        pending_round=snapshot.pending_round,
        pending_outcome=snapshot.pending_outcome,
        telemetry_round=snapshot.telemetry_round,
        handled=MappingProxyType(dict(snapshot.handled_offsets)),
    )
