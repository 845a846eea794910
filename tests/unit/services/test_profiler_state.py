"""The profiler's pure state machine: folding order, one outcome per round, redelivery."""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import pytest

from moe.profiles import fold_round_outcome, fold_status, fold_telemetry
from moe.wire import expert_losses, telemetry_reading
from schemas import decode_as, encode
from schemas.messages import Assignment, DeviceStatus, ProfileSnapshot, Telemetry, UpdateAck
from services.profiler.state import (
    DeviceState,
    FoldParams,
    Note,
    ProfilerInput,
    from_snapshot,
    step,
    to_snapshot,
)

DEV = "dev-00003"
TEL, ASG, ACK = "telemetry/1", "assignments/1", "acks/1"


def telemetry(
    round_: int, *, ms: float = 2.0, kbps: float = 800.0, loss: dict[str, float] | None = None
) -> Telemetry:
    return Telemetry(
        message_id=f"t{round_}-{ms}",
        device_id=DEV,
        round=round_,
        timestamp=100.0 + round_,
        device_type=1,
        compute_ms_per_sample=ms,
        bandwidth_kbps=kbps,
        memory_mb=2048.0,
        battery=0.8,
        num_samples=60,
        routing_histogram=(3.0, 1.0, 0.0, 2.0),
        expert_loss=loss or {},
    )


def status(round_: int, online: bool) -> DeviceStatus:
    return DeviceStatus(
        message_id=f"s{round_}{online}", device_id=DEV, round=round_, timestamp=1.0, online=online
    )


def assignment(round_: int, experts: tuple[int, ...] = (0, 3)) -> Assignment:
    return Assignment(
        message_id=f"a{round_}",
        device_id=DEV,
        round=round_,
        timestamp=1.0,
        experts=experts,
        deadline=1e9,
        model_versions={"shared": round_ - 1},
    )


def ack(round_: int, part: str, status_: str) -> UpdateAck:
    return UpdateAck(
        message_id=f"k{round_}{part}{status_}",
        device_id=DEV,
        round=round_,
        timestamp=1.0,
        update_id=f"u{round_}",
        part=part,
        status=status_,
    )


class Feed:
    """Offsets per source, like the partitions the records come from."""

    def __init__(self) -> None:
        self.state: DeviceState | None = None
        self.offsets = {TEL: 0, ASG: 0, ACK: 0}
        self.log: list[tuple[ProfilerInput, str, int, float]] = []

    def __call__(self, message: ProfilerInput, now: float = 500.0) -> Note:
        source = {Telemetry: TEL, DeviceStatus: TEL, Assignment: ASG, UpdateAck: ACK}[type(message)]
        offset = self.offsets[source]
        self.offsets[source] += 1
        self.log.append((message, source, offset, now))
        result = step(self.state, message, source=source, offset=offset, now=now)
        self.state = result.state
        return result.note


def test_defaults_are_the_ones_the_simulation_folds_with() -> None:
    params = FoldParams()
    tel = inspect.signature(fold_telemetry).parameters
    out = inspect.signature(fold_round_outcome).parameters
    assert params.telemetry_alpha == tel["alpha"].default
    assert params.outcome_alpha == out["alpha"].default
    assert params.loss_beta == out["beta"].default


def test_first_telemetry_creates_the_profile_and_sets_the_round() -> None:
    t = telemetry(1)
    result = step(None, t, source=TEL, offset=7, now=123.0)
    assert result.changed
    assert result.note is Note.TELEMETRY
    assert result.state is not None
    assert result.state.profile == fold_telemetry(None, telemetry_reading(t), now=123.0)
    assert (result.state.round, result.state.telemetry_round) == (1, 1)
    assert dict(result.state.handled) == {TEL: 7}


def test_status_of_a_device_without_profile_is_dropped() -> None:
    result = step(None, status(1, True), source=TEL, offset=0, now=1.0)
    assert (result.state, result.changed, result.note) == (None, False, Note.UNKNOWN_DEVICE)
    for message in (assignment(1), ack(1, "shared", "applied")):
        assert step(None, message, source=ASG, offset=0, now=1.0).note is Note.UNKNOWN_DEVICE


def test_status_folds_online_and_never_lowers_the_round() -> None:
    feed = Feed()
    feed(telemetry(3), now=10.0)
    assert feed(status(4, False), now=20.0) is Note.STATUS
    assert feed.state is not None
    assert not feed.state.profile.online
    assert feed.state.round == 4
    # A last will registered when the device connected carries an older round.
    feed(status(1, True), now=30.0)
    assert feed.state.profile.online
    assert feed.state.round == 4
    assert feed.state.profile.last_seen == 30.0


def test_an_online_status_leaves_the_announcement_to_the_telemetry() -> None:
    feed = Feed()
    feed(telemetry(1))
    assert feed(status(2, True)) is Note.STATUS  # sent just before the telemetry of round 2
    assert feed.state is not None
    assert feed.state.round == 1
    feed(telemetry(2))
    assert feed.state.round == 2


def test_outcome_is_folded_once_at_the_next_telemetry_with_its_losses() -> None:
    feed = Feed()
    feed(telemetry(1, loss={"expert-0": 0.4}))  # losses of an older training: not folded
    before = feed.state
    assert feed(assignment(1)) is Note.ASSIGNED
    assert feed(ack(1, "shared", "applied")) is Note.VERDICT
    assert feed(ack(1, "expert-0", "applied")) is Note.NO_CHANGE  # one ack per part
    assert feed(ack(1, "expert-3", "duplicate")) is Note.NO_CHANGE
    assert feed.state is not None
    assert before is not None
    assert feed.state.profile.rounds_assigned == 0  # not folded before the losses come
    t2 = telemetry(2, ms=4.0, loss={"expert-0": 0.9, "expert-3": 0.2})
    result = step(feed.state, t2, source=TEL, offset=9, now=600.0)
    assert result.outcome_folded
    assert result.state is not None
    expected = fold_round_outcome(
        before.profile,
        round=1,
        assigned=True,
        completed_in_time=True,
        expert_losses=expert_losses(t2),
    )
    expected = fold_telemetry(expected, telemetry_reading(t2), now=600.0)
    assert result.state.profile == expected
    assert expected.rounds_assigned == 1
    assert expected.rounds_completed == 1
    assert (result.state.pending_round, result.state.pending_outcome) == (-1, "")
    # A later ack of the folded round is stale and changes nothing.
    again = step(result.state, ack(1, "expert-3", "applied"), source=ACK, offset=50, now=1.0)
    assert again.note is Note.STALE
    assert not again.changed


@pytest.mark.parametrize("bad", ["late", "rejected"])
def test_a_late_or_rejected_part_spoils_the_round(bad: str) -> None:
    feed = Feed()
    feed(telemetry(1))
    feed(assignment(1))
    feed(ack(1, "expert-0", bad))
    assert feed(ack(1, "shared", "applied")) is Note.NO_CHANGE  # "missed" sticks
    feed(telemetry(2, loss={"expert-0": 0.5}))
    assert feed.state is not None
    profile = feed.state.profile
    assert (profile.rounds_assigned, profile.rounds_completed) == (1, 0)
    assert profile.completion_rate == pytest.approx(0.7)
    assert dict(profile.expert_trials) == {0: 1}  # it trained: its losses count


def test_no_verdict_by_the_next_telemetry_means_not_completed_with_its_losses() -> None:
    # A device uploading after the round closed (late) announces the next round first: it
    # trained, and its losses count, as in the simulation; its late ack then comes stale.
    feed = Feed()
    feed(telemetry(1, loss={"expert-2": 0.8}))  # an older training's: nothing pending
    feed(assignment(1))
    feed(telemetry(2, loss={"expert-1": 0.3}))
    assert feed.state is not None
    profile = feed.state.profile
    assert (profile.rounds_assigned, profile.rounds_completed, profile.last_round) == (1, 0, 1)
    assert dict(profile.expert_quality) == {1: pytest.approx(math.exp(-0.3))}
    assert dict(profile.expert_trials) == {1: 1}
    assert feed(ack(1, "expert-1", "late")) is Note.STALE
    # A device that did not train (dropped out, no model) has no losses left to report.
    feed(assignment(2))
    feed(telemetry(3, loss={}))
    assert feed.state is not None
    assert (feed.state.profile.rounds_assigned, feed.state.profile.rounds_completed) == (2, 0)
    assert dict(feed.state.profile.expert_trials) == {1: 1}


def test_a_later_assignment_folds_the_pending_round() -> None:
    feed = Feed()
    feed(telemetry(1))
    feed(assignment(1))
    feed(ack(1, "shared", "applied"))
    before = feed.state
    assert feed(assignment(3)) is Note.ASSIGNED
    assert feed.state is not None
    assert before is not None
    assert feed.state.profile == fold_round_outcome(
        before.profile, round=1, assigned=True, completed_in_time=True, expert_losses={}
    )
    assert feed.state.pending_round == 3
    assert feed(assignment(1)) is Note.STALE  # folded already
    assert feed(assignment(3)) is Note.NO_CHANGE  # redone by the matcher


def test_an_ack_read_before_its_assignment_opens_the_round() -> None:
    feed = Feed()
    feed(telemetry(1))
    assert feed(ack(1, "shared", "applied")) is Note.VERDICT
    assert feed.state is not None
    assert (feed.state.pending_round, feed.state.pending_outcome) == (1, "applied")
    assert feed(assignment(1)) is Note.NO_CHANGE


def test_an_empty_assignment_is_not_work() -> None:
    feed = Feed()
    feed(telemetry(1))
    assert feed(assignment(1, experts=())) is Note.NO_CHANGE
    assert feed.state is not None
    assert feed.state.pending_round == -1


def test_a_second_telemetry_of_a_round_is_not_folded_again() -> None:
    feed = Feed()
    feed(telemetry(2, ms=2.0))
    first = feed.state
    assert feed(telemetry(2, ms=9.0)) is Note.STALE
    assert feed(telemetry(1, ms=9.0)) is Note.STALE
    assert feed.state is not None
    assert first is not None
    assert feed.state.profile == first.profile


def _script(feed: Feed) -> None:
    feed(status(1, True))  # no profile yet: dropped
    feed(telemetry(1, loss={}))
    feed(status(1, True))
    feed(assignment(1))
    feed(ack(1, "shared", "applied"))
    feed(ack(1, "expert-0", "applied"))
    feed(ack(1, "expert-3", "applied"))
    feed(telemetry(2, ms=3.0, loss={"expert-0": 0.5, "expert-3": 1.5}))
    feed(assignment(2, experts=(1,)))
    feed(ack(2, "shared", "late"))
    feed(ack(2, "expert-1", "late"))
    feed(status(3, False))
    feed(telemetry(4, ms=2.5, loss={"expert-1": 0.7}))
    feed(assignment(4, experts=(2,)))
    feed(telemetry(5, ms=2.2, loss={"expert-2": 0.6}))  # trained; its verdict not read yet


def test_the_script_folds_what_calling_moe_profiles_by_hand_gives() -> None:
    feed = Feed()
    _script(feed)
    assert feed.state is not None
    t = [m for m, *_ in feed.log if isinstance(m, Telemetry)]
    p = fold_telemetry(None, telemetry_reading(t[0]), now=500.0)
    p = fold_status(p, online=True, now=500.0)
    p = fold_round_outcome(
        p, round=1, assigned=True, completed_in_time=True, expert_losses=expert_losses(t[1])
    )
    p = fold_telemetry(p, telemetry_reading(t[1]), now=500.0)
    p = fold_status(p, online=False, now=500.0)
    p = fold_round_outcome(
        p, round=2, assigned=True, completed_in_time=False, expert_losses=expert_losses(t[2])
    )
    p = fold_telemetry(p, telemetry_reading(t[2]), now=500.0)
    p = fold_round_outcome(
        p, round=4, assigned=True, completed_in_time=False, expert_losses=expert_losses(t[3])
    )
    p = fold_telemetry(p, telemetry_reading(t[3]), now=500.0)
    assert feed.state.profile == p
    assert (p.rounds_assigned, p.rounds_completed, p.last_round) == (3, 1, 4)
    assert dict(p.expert_trials) == {0: 1, 3: 1, 1: 1, 2: 1}
    assert feed.state.round == 5


def test_redelivery_after_a_crash_at_any_point_folds_nothing_twice() -> None:
    whole = Feed()
    _script(whole)
    for crash in range(len(whole.log) + 1):
        # Handled up to `crash`; the changelog holds the last state that changed. Then every
        # record since the committed offsets (worst case: from the very start) comes again.
        state: DeviceState | None = None
        published: DeviceState | None = None
        for message, source, offset, now in whole.log[:crash]:
            result = step(state, message, source=source, offset=offset, now=now)
            state = result.state
            if result.changed:
                published = result.state
        state = None if published is None else _through_the_wire(published)
        for message, source, offset, now in whole.log:
            result = step(state, message, source=source, offset=offset, now=now)
            if published is not None and offset <= published.handled.get(source, -1):
                assert result.note is Note.REDELIVERED
                assert not result.changed
            state = result.state
        assert state == whole.state, f"crash after {crash} records"


def _through_the_wire(state: DeviceState) -> DeviceState:
    snapshot = to_snapshot(state, message_id="profile:x", timestamp=5.0)
    return from_snapshot(decode_as(encode(snapshot), ProfileSnapshot))


def test_snapshot_round_trip_keeps_the_bookkeeping() -> None:
    feed = Feed()
    feed(telemetry(1))
    feed(assignment(1))
    feed(ack(1, "shared", "late"))
    assert feed.state is not None
    snapshot = to_snapshot(feed.state, message_id="profile:x", timestamp=5.0)
    assert (snapshot.round, snapshot.pending_round, snapshot.pending_outcome) == (1, 1, "missed")
    assert snapshot.telemetry_round == 1
    assert snapshot.handled_offsets == {TEL: 0, ASG: 0, ACK: 0}
    assert _through_the_wire(feed.state) == feed.state


def test_newer_than_compares_handled_offsets() -> None:
    feed = Feed()
    feed(telemetry(1))
    older = feed.state
    feed(assignment(1))
    assert feed.state is not None
    assert older is not None
    assert feed.state.newer_than(older)
    assert not older.newer_than(feed.state)
    assert not feed.state.newer_than(replace(feed.state))
