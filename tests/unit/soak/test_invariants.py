"""Each invariant against recorded event streams that do and do not violate it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fedmoe.soak.events import (
    DeviceAcked,
    Dropped,
    LagSample,
    Online,
    PartClosedSeen,
    RoundClosedSeen,
    RoundOpenedSeen,
    RssSample,
    Sent,
    SoakEvent,
    Verdict,
)
from fedmoe.soak.invariants import Bounds, Invariants
from fedmoe.soak.memory import rss_slope

BOUNDS = Bounds(
    settle_s=10.0, round_bound_s=5.0, stall_s=30.0, max_lag=100, lag_for_s=20.0,
    rss_warmup_s=10.0, rss_min_span_s=50.0, rss_mb_per_hour=100.0, rss_judge_every_s=1.0,
)  # fmt: skip


def run(events: Sequence[SoakEvent], end: float, *, finish: bool = True) -> Invariants:
    """Feed `events` in order, checking after each one at its time, then at `end`."""
    inv = Invariants(BOUNDS)
    for event in events:
        inv.feed(event)
        inv.check(event.t)
    inv.check(end)
    if finish:
        inv.finish(end)
    return inv


def applied(t: float, uid: str, device: str, part: str = "expert-0", r: int = 1) -> Verdict:
    return Verdict(t, (uid, part), device, r, "applied")


# A clean round: two devices send, both applied, both see their acks; the part closes with 2.
CLEAN: list[SoakEvent] = [
    RoundOpenedSeen(0.0, 1, deadline_t=10.0),
    Sent(1.0, ("u1", "expert-0")),
    Sent(1.5, ("u2", "expert-0")),
    applied(2.0, "u1", "dev-1"),
    applied(2.5, "u2", "dev-2"),
    Verdict(2.6, ("u2", "expert-0"), "dev-2", 1, "duplicate"),  # a resend's verdict
    DeviceAcked(3.0, ("u1", "expert-0")),
    DeviceAcked(3.0, ("u2", "expert-0")),
    PartClosedSeen(4.0, 1, "expert-0", applied=2),
    PartClosedSeen(9.0, 1, "expert-0", applied=2),  # republished after a restart: same count
    RoundClosedSeen(5.0, 1),
]


def test_a_clean_stream_violates_nothing() -> None:
    inv = run(CLEAN, end=60.0)
    assert inv.violations == []
    summary = inv.summary()
    assert summary["applied_exactly_once"] == {"checked": 1, "violated": 0}
    assert summary["acked_subset_applied"] == {"checked": 2, "violated": 0}
    assert summary["applied_subset_sent"] == {"checked": 2, "violated": 0}
    assert summary["round_within_deadline"] == {"checked": 1, "violated": 0}


def names(inv: Invariants) -> list[str]:
    return [v.invariant for v in inv.violations]


def test_a_part_that_counts_an_update_twice() -> None:
    events = [*CLEAN[:-3], PartClosedSeen(4.0, 1, "expert-0", applied=3), RoundClosedSeen(5, 1)]
    inv = run(events, end=60.0)
    assert names(inv) == ["applied_exactly_once"]
    assert inv.violations[0].evidence["closed_applied"] == 3
    assert inv.violations[0].evidence["applied_verdicts"] == 2


def test_two_updates_of_one_device_applied_to_one_part() -> None:
    events = [*CLEAN, Sent(6.0, ("u3", "expert-0")), applied(6.5, "u3", "dev-1")]
    inv = run(events, end=60.0)
    assert "applied_exactly_once" in names(inv)
    assert inv.violations[0].evidence["updates"] == ["u1", "u3"]


def test_a_part_republished_with_another_count() -> None:
    events = [*CLEAN, PartClosedSeen(12.0, 1, "expert-0", applied=1)]
    assert names(run(events, end=60.0)) == ["applied_exactly_once"]


def test_an_ack_the_aggregators_never_gave() -> None:
    events = [*CLEAN, DeviceAcked(7.0, ("u9", "expert-1"))]
    inv = run(events, end=60.0)
    assert names(inv) == ["acked_subset_applied"]
    assert inv.violations[0].evidence["update"] == "u9"


def test_an_ack_judged_only_after_it_could_settle() -> None:
    events = [*CLEAN, DeviceAcked(7.0, ("u9", "expert-1"))]
    inv = run(events, end=12.0, finish=False)
    assert inv.violations == []  # 5 s after: the verdict may still be on its way
    inv.check(17.5)
    assert names(inv) == ["acked_subset_applied"]


def test_an_applied_update_no_device_sent() -> None:
    events = [*CLEAN[:3], *CLEAN[4:], applied(2.0, "u1", "dev-1")]
    events = [e for e in events if e != Sent(1.0, ("u1", "expert-0"))]
    inv = run(events, end=60.0)
    assert names(inv) == ["applied_subset_sent"]


def test_a_round_open_past_its_deadline_plus_bound() -> None:
    events: list[SoakEvent] = [RoundOpenedSeen(0.0, 1, deadline_t=10.0), Online(1.0, 5)]
    inv = run(events, end=14.0, finish=False)
    assert inv.violations == []
    inv.check(16.0)
    assert names(inv) == ["round_within_deadline"]
    inv.feed(RoundClosedSeen(20.0, 1))  # flagged once, not again at its close
    assert len(inv.violations) == 1
    late_close = run([RoundOpenedSeen(0.0, 2, 10.0), RoundClosedSeen(15.5, 2)], end=16.0)
    assert names(late_close) == ["round_within_deadline"]


def test_rounds_stall_while_devices_are_online() -> None:
    ok = run([Online(1.0, 3), RoundClosedSeen(20.0, 1), RoundClosedSeen(45.0, 2)], end=70.0)
    assert ok.violations == []
    assert ok.summary()["rounds_progress"]["checked"] > 0
    stalled = run([Online(1.0, 3), RoundClosedSeen(20.0, 1)], end=51.0)
    assert names(stalled) == ["rounds_progress"]
    stalled.check(60.0)  # one stall, one violation
    assert len(stalled.violations) == 1
    nobody = run([Online(1.0, 0), RoundClosedSeen(20.0, 1)], end=200.0)
    assert nobody.violations == []


def test_lag_above_the_bound_for_too_long() -> None:
    brief = [LagSample(t, "profiler", "profiler", 500) for t in (0.0, 10.0, 19.0)]
    brief.append(LagSample(25.0, "profiler", "profiler", 3))
    assert run(brief, end=30.0).violations == []
    lasting = [LagSample(t, "matcher", "matcher", 500) for t in range(0, 40, 5)]
    inv = run(lasting, end=40.0)
    assert names(inv) == ["consumer_lag_bounded"]
    assert inv["consumer_lag_bounded"].peaks == {"matcher": 500}  # type: ignore[attr-defined]


def test_memory_that_keeps_growing() -> None:
    # 1 MB per minute = 60 MB/h: within 100 MB/h. 3 MB per minute = 180 MB/h: not.
    flat = [RssSample(float(t), "evaluator", 7, 300.0 + t / 60.0) for t in range(0, 121, 5)]
    assert run(flat, end=121.0).violations == []
    leak = [RssSample(float(t), "evaluator", 7, 300.0 + t / 20.0) for t in range(0, 121, 5)]
    inv = run(leak, end=121.0)
    assert names(inv) == ["rss_bounded"]
    assert inv.violations[0].evidence["mb_per_hour"] == pytest.approx(180.0)


def test_memory_not_judged_on_too_short_a_span() -> None:
    leak = [RssSample(float(t), "evaluator", 7, 300.0 + t) for t in range(0, 40, 5)]
    inv = run(leak, end=40.0)
    assert inv.violations == []
    assert inv.summary()["rss_bounded"]["checked"] == 0


def test_memory_judged_only_on_incarnations_that_lived_long_enough() -> None:
    # Short incarnations (restarted every 40 s) each climb steeply while they fill up: not
    # judged, even though together they span far more than rss_min_span_s (50 s here).
    ramps = [
        RssSample(float(start + t), "gateway", start, 100.0 + t)
        for start in range(0, 400, 40)
        for t in range(0, 40, 5)
    ]
    inv = run(ramps, end=400.0)
    assert inv.violations == []
    assert inv.summary()["rss_bounded"]["checked"] == 0
    # One incarnation that lived 70 s past its warm-up and kept climbing is judged.
    long_leak = [RssSample(float(400 + t), "gateway", 400, 100.0 + t) for t in range(0, 81, 5)]
    inv = run(ramps + long_leak, end=481.0)
    assert names(inv) == ["rss_bounded"]
    assert inv.violations[0].evidence["span_s"] >= 50.0  # judged once it had lived that long


def test_mosquitto_drops() -> None:
    assert run([Dropped(5.0, 0), Dropped(10.0, 0)], end=11.0).violations == []
    inv = run([Dropped(5.0, 0), Dropped(10.0, 4), Dropped(15.0, 4), Dropped(20.0, 9)], end=21)
    assert names(inv) == ["mqtt_no_drops", "mqtt_no_drops"]
    assert inv.summary()["mqtt_no_drops"] == {"checked": 4, "violated": 2}


def test_slope_has_one_intercept_per_incarnation() -> None:
    # Two incarnations, each flat, the second from a higher baseline: no growth.
    samples = [(1, float(t), 200.0) for t in range(0, 100, 10)]
    samples += [(2, float(t), 400.0) for t in range(100, 200, 10)]
    fit = rss_slope(samples, warmup_s=0.0)
    assert fit.mb_per_hour == pytest.approx(0.0)
    assert fit.span_s == pytest.approx(180.0)
    # Warm-up samples are left out: a climb in the first 30 s does not count.
    climb = [(1, float(t), 100.0 + min(t, 30) * 10) for t in range(0, 200, 10)]
    assert rss_slope(climb, warmup_s=30.0).mb_per_hour == pytest.approx(0.0)
    assert rss_slope(climb, warmup_s=0.0).mb_per_hour > 0
    assert rss_slope([], warmup_s=0.0).samples == 0
    # An incarnation shorter than min_span_s after warm-up adds nothing.
    assert rss_slope(climb, warmup_s=30.0, min_span_s=200.0).samples == 0
