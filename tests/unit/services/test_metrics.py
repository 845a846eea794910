from collections import Counter

from services.metrics import Outcome, ServiceMetrics


def test_snapshot_holds_every_outcome_and_the_handlers_notes_live() -> None:
    notes: Counter[str] = Counter()
    metrics = ServiceMetrics("profiler", notes)
    metrics.inc(Outcome.HANDLED, 2)
    notes["redelivered"] += 3  # noted after the metrics object was made: read live

    snap = metrics.snapshot()

    assert snap["service"] == "profiler"
    assert snap["handled"] == 2
    assert snap["redelivered"] == 3
    assert {o.value for o in Outcome} <= set(snap)
    assert '"redelivered": 3' in metrics.log_line()


def test_snapshot_without_notes_has_only_the_runtimes_counters() -> None:
    snap = ServiceMetrics("matcher").snapshot()
    assert set(snap) == {o.value for o in Outcome} | {"service", "uptime_s"}
