"""Replay's pure parts: the schedule against a fake clock, rewriting, filters, round following."""

from __future__ import annotations

import asyncio

import pytest

from recording.follow import RoundFollower, recorded_rounds
from recording.format import Record
from recording.replayer import Filters, Renamer, parity, recorded_assignments
from recording.rewrite import IdMap, rewrite
from recording.schedule import Lateness, Timeline, wait_until
from schemas import decode, encode
from schemas.messages import Telemetry
from tests.unit.recording.helpers import small_fleet, telemetry


class FakeClock:
    """A clock that only moves when slept on; each sleep overshoots by `lag` (a busy loop)."""

    def __init__(self, lag: float = 0.0) -> None:
        self.now = 100.0
        self.lag = lag
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.lag


async def _play(
    times_ns: list[int], speed: float | None, clock: FakeClock, loops: int = 1, work: float = 0.0
) -> Lateness:
    timeline = Timeline.of(times_ns, speed)
    lateness = Lateness()
    start = clock()
    for loop in range(loops):
        for t in times_ns:
            due = start + timeline.offset(t, loop)
            await wait_until(due, clock, clock.sleep)
            lateness.note(due, clock())
            clock.now += work  # the publish itself takes time
    return lateness


def test_due_times_follow_the_recording_divided_by_the_speed() -> None:
    times = [0, 1_000_000_000, 1_500_000_000, 4_000_000_000]
    clock = FakeClock()
    lateness = asyncio.run(_play(times, 10.0, clock))
    assert lateness.errors == [0.0] * 4
    assert clock.now == pytest.approx(100.4)


def test_error_does_not_accumulate_when_each_send_takes_time() -> None:
    # 100 records 10 ms apart at 1x, each publish taking 4 ms and each sleep overshooting by
    # 1 ms: a sleep-per-gap loop would drift by 5 ms per record (0.5 s at the end); due
    # times from the start keep every error at the overshoot.
    times = [i * 10_000_000 for i in range(100)]
    clock = FakeClock(lag=0.001)
    lateness = asyncio.run(_play(times, 1.0, clock, work=0.004))
    assert max(lateness.errors) == pytest.approx(0.001)
    assert clock.now == pytest.approx(100.0 + 0.99 + 0.001 + 0.004)


def test_max_speed_never_sleeps_and_loops_repeat_with_one_gap() -> None:
    clock = FakeClock()
    asyncio.run(_play([0, 5, 10], None, clock, loops=3))
    assert clock.sleeps == []
    timeline = Timeline.of([0, 1_000_000_000, 2_000_000_000], 2.0)
    assert timeline.offset(0, 1) == pytest.approx(1.5)  # span 2 s + gap 1 s, at 2x
    assert timeline.offset(2_000_000_000, 2) == pytest.approx(4.0)


def test_percentiles_and_rate() -> None:
    lateness = Lateness()
    for i in range(100):
        lateness.note(0.0, i / 1000)
    report = lateness.report(2.0)
    assert (report["error_p50_ms"], report["error_p99_ms"]) == (49.0, 98.0)
    assert report["rate_per_s"] == 50.0
    with pytest.raises(ValueError):
        Timeline.of([0], 0.0)


def test_rewrite_goes_through_the_codec() -> None:
    original = encode(telemetry("dev-00001", 7))
    out = rewrite(original, message_id="fresh", timestamp=5.0, round=12)
    message = decode(out)
    assert isinstance(message, Telemetry)
    assert (message.message_id, message.timestamp, message.round) == ("fresh", 5.0, 12)
    assert message.routing_histogram == (10.0, 10.0, 10.0, 10.0)
    assert rewrite(original) == original
    assert rewrite(b"\xc1garbage", round=3) == b"\xc1garbage"  # bad input stays bad input


def test_id_map_keeps_resends_together_per_loop() -> None:
    counter = iter(range(100))
    ids = IdMap(lambda: f"id{next(counter)}")
    assert ids.fresh("u1") == ids.fresh("u1") == "id0"
    assert ids.fresh("u2") == "id1"
    assert ids.fresh("u1", loop=1) == "id2"


def test_filters_and_renaming() -> None:
    records = small_fleet(rounds=3, devices=3)
    chosen = Filters(devices=frozenset({"dev-00001"}), types=frozenset({"telemetry"})).select(
        records
    )
    assert [(r.device, r.round) for r in chosen] == [("dev-00001", k) for k in (1, 2, 3)]
    window = Filters(from_s=1.0, to_s=2.0).select(records)
    assert {r.round for r in window} == {2}
    names = Renamer("fleet", "live", "fedmoe", "ns2")
    assert names.mqtt("fleet/dev-1/telemetry") == "live/dev-1/telemetry"
    assert names.kafka("fedmoe.rounds") == "ns2.rounds"


def test_follow_rounds_maps_recorded_rounds_onto_live_closes() -> None:
    records = small_fleet(rounds=3, devices=2)
    update = Record.observed(
        records[-1].t_ns + 10, "mqtt", "fleet/dev-00000/update", b"\x00", qos=1, retain=False
    )
    records.append(Record(**{**_fields(update), "type": "update", "round": 3}))
    rounds = recorded_rounds(records)
    assert [r.round for r in rounds] == [1, 2, 3]
    follower = RoundFollower(rounds, speed=2.0)
    first = follower.on_round_closed(40)  # live round 40 closed: recorded round 1 as 41
    assert {t.round for t in first} == {41}
    assert [t.record.round for t in first] == [1] * 4
    assert first[0].delay_s == 0.0
    assert first[1].delay_s == pytest.approx(0.0005)  # 1 ms apart, at 2x
    assert follower.on_round_closed(40) == []  # a redelivered close
    follower.on_round_closed(41)
    third = follower.on_round_closed(42)
    assert {t.round for t in third} == {43}
    assert follower.done
    assert follower.mapping == {41: 1, 42: 2, 43: 3}
    uploads = follower.on_round_opened(43)
    assert [t.record.type for t in uploads] == ["update"]
    assert uploads[0].delay_s > 0  # after the recorded round's first assignment
    assert follower.on_round_opened(43) == []


def _fields(record: Record) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__slots__}


def test_parity_compares_live_and_recorded_assignments() -> None:
    recorded = recorded_assignments(small_fleet(rounds=2, devices=2))
    assert recorded[1] == {"dev-00000": (0,), "dev-00001": (1,)}
    live = {5: {"dev-00000": (0,), "dev-00001": (1,)}, 6: {"dev-00000": (2,)}}
    report = parity({5: 1, 6: 2}, live, recorded)
    assert (report["rounds_compared"], report["rounds_equal"]) == (2, 1)
    assert report["rounds"][1]["common_pairs"] == 0


class _Collect:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str, bytes]] = []

    async def send(self, record: Record, topic: str, payload: bytes) -> None:
        self.sent.append((self.clock(), topic, payload))
        self.clock.now += 0.00005  # the publish costs time: must not push later records


def test_replayer_sends_on_schedule_with_fresh_ids_against_a_fake_clock() -> None:
    from brokers.settings import BrokerSettings
    from recording.replayer import Replayer
    from recording.settings import ReplaySettings

    records = [r for r in small_fleet(rounds=2, devices=2) if r.type == "telemetry"]
    clock = FakeClock()
    settings = ReplaySettings(speed="10", loop=2, rewrite=True)
    replayer = Replayer(
        BrokerSettings(),
        settings,
        records,
        Renamer("fleet", "live", "fedmoe", "fedmoe"),
        clock=clock,
        sleep=clock.sleep,
        wall=lambda: 5.0,
    )
    sink = _Collect(clock)
    asyncio.run(replayer.play_timed(sink))
    assert len(sink.sent) == 2 * len(records)
    t0 = records[0].t_ns
    start = 100.0
    period = (records[-1].t_ns - t0 + (records[-1].t_ns - t0) // 3) / 1e9 / 10
    want = [start + (r.t_ns - t0) / 1e10 + loop * period for loop in (0, 1) for r in records]
    assert [t for t, _, _ in sink.sent] == pytest.approx(want)
    assert max(replayer.lateness.errors) < 1e-9
    assert all(topic.startswith("live/") for _, topic, _ in sink.sent)
    decoded = [decode(p) for _, _, p in sink.sent]
    ids = [m.message_id for m in decoded]
    assert len(set(ids)) == len(ids)  # fresh per record and per loop
    assert not {m.message_id for m in decoded} & {r.message_id for r in records}
    assert {m.timestamp for m in decoded} == {5.0}
    assert [m.round for m in decoded] == [r.round for r in records] * 2
