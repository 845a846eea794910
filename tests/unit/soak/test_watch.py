"""The watchers' pure parts: a /metrics body read into RSS, start time and lag; the fleet
journals read into events, a line being written left for the next poll."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import generate_latest

from fedmoe.soak.events import DeviceAcked, Online, Sent, SoakEvent
from fedmoe.soak.watch import JournalTail, parse_metrics
from services.metrics import ServiceMetrics, prometheus_registry


def test_a_metrics_body_is_read() -> None:
    metrics = ServiceMetrics("matcher")
    metrics.set_lag("ns.rounds", 0, 3)
    metrics.set_lag("ns.profiles", 1, 12)
    scrape = parse_metrics(generate_latest(prometheus_registry(metrics)).decode())
    assert scrape.max_lag == 12
    assert scrape.rss_mb > 1
    assert scrape.started > 0
    assert {"fedmoe_records", "fedmoe_consumer_lag", "process_resident_memory_bytes"} <= (
        scrape.names
    )


def test_journals_become_events(tmp_path: Path) -> None:
    events: list[SoakEvent] = []
    tail = JournalTail(events.append, t0=1000.0)
    a, b = tmp_path / "fleet-1.jsonl", tmp_path / "fleet-2.jsonl"
    line = {"t": 1005.0, "connected": 3, "devices": 4, "sent": [["u1", "shared"]], "acked": []}
    a.write_text(json.dumps(line) + "\n" + '{"t": 1006.0, "conn')  # the second is half written
    b.write_text(json.dumps({**line, "connected": 2, "sent": [], "acked": [["u0", "e-1"]]}) + "\n")
    tail.poll([a, b, tmp_path / "not-yet.jsonl"])
    assert events == [
        Sent(5.0, ("u1", "shared")),
        DeviceAcked(5.0, ("u0", "e-1")),
        Online(5.0, 5),
    ]
    with a.open("a") as f:
        f.write('ected": 1, "sent": [], "acked": [["u1", "shared"]]}\n')
    events.clear()
    tail.poll([a, b])
    assert events == [DeviceAcked(6.0, ("u1", "shared")), Online(6.0, 3)]
    assert (tail.sent, tail.acked) == (1, 2)
