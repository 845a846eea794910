"""The load monitor's state machine: the exact load of a scripted run, any read order, restarts."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from moe.load import ExpertLoadState, on_assignment, on_part_closed, on_round_closed
from moe.wire import expert_load_message
from schemas.messages import PartVersion, RoundClosed, RoundOpened
from services.checkpoint import CheckpointError, CheckpointStore
from services.load_monitor.restore import checkpoint_data, choose_start
from services.load_monitor.state import ClosedRound, LoadMonitor, Note

E = 4
W = {"w": np.zeros(2, dtype=np.float32)}


def opened(r: int, experts: list[tuple[int, ...]]) -> RoundOpened:
    counts = {f"expert-{e}": sum(e in x for x in experts) for e in range(E)}
    return RoundOpened(
        message_id=f"open-{r}", device_id="matcher", round=r, timestamp=1.0, deadline=2.0,
        strategy="fitness", devices=len(experts), expected_parts={"shared": len(experts), **counts},
        model_versions={},
    )  # fmt: skip


def closed(r: int, versions: dict[str, int]) -> RoundClosed:
    return RoundClosed(
        message_id=f"close-{r}", device_id="matcher", round=r, timestamp=1.0, reason="quorum",
        parts_closed=E + 1, model_versions=versions,
    )  # fmt: skip


def version(part: str, v: int, contributors: int = 0, samples: float = 0.0) -> PartVersion:
    return PartVersion(
        message_id=f"{part}@{v}", device_id="aggregator", round=v, timestamp=1.0, part=part,
        version=v, layout_version=1, tensors=W, contributors=contributors, samples=samples,
    )  # fmt: skip


Event = RoundOpened | RoundClosed | PartVersion

ROUND1 = [(0, 2), (0,), (2,)]  # three devices' experts
ROUND2 = [(0, 1), (3,)]
V0 = {"shared": 0, **{f"expert-{e}": 0 for e in range(E)}}
V1 = {**V0, "shared": 1, "expert-0": 1, "expert-2": 1}
V2 = {**V1, "shared": 2, "expert-0": 2, "expert-1": 1, "expert-3": 1}

ROUNDS: list[Event] = [
    opened(0, []), closed(0, V0), opened(1, ROUND1), closed(1, V1),
    opened(2, ROUND2), closed(2, V2),
]  # fmt: skip
MODEL: list[list[Event]] = [  # one list per partition: each keeps its order
    [version("shared", 0), version("shared", 1, 3, 90.0), version("shared", 2, 2, 50.0)],
    [version("expert-0", 0), version("expert-0", 1, 2, 30.0), version("expert-0", 2, 1, 12.5)],
    [version("expert-1", 0), version("expert-1", 1, 1, 5.0), version("expert-2", 0)],
    [version("expert-2", 1, 1, 10.0), version("expert-3", 0), version("expert-3", 1, 0, 0.0)],
]


def reference() -> list[ExpertLoadState]:
    """The load after each RoundClosed, by calling moe.load by hand."""

    def x(experts: list[tuple[int, ...]]) -> np.ndarray:
        m = np.zeros((len(experts), E), dtype=bool)
        for row, xs in enumerate(experts):
            m[row, list(xs)] = True
        return m

    out = []
    load = on_round_closed(on_assignment(ExpertLoadState.empty(E), x([])))
    out.append(load)
    load = on_assignment(load, x(ROUND1))
    load = on_part_closed(load, 0, 2, 30.0)
    load = on_part_closed(load, 2, 1, 10.0)
    out.append(load := on_round_closed(load))
    load = on_assignment(load, x(ROUND2))
    load = on_part_closed(load, 0, 1, 12.5)
    load = on_part_closed(load, 1, 1, 5.0)
    out.append(on_round_closed(load))  # expert-3's version 1 had no contributors
    return out


def feed(monitor: LoadMonitor, events: list[Event], now: float = 0.0) -> list[ClosedRound]:
    out: list[ClosedRound] = []
    for event in events:
        if isinstance(event, RoundOpened):
            monitor.on_round_opened(event)
        elif isinstance(event, RoundClosed):
            out += monitor.on_round_closed(event, now)[1]
        else:
            out += monitor.on_part_version(event, now)[1]
    return out


def in_order() -> list[Event]:
    """What the protocol produces, in causal order."""
    model = [v for part in MODEL for v in part]
    first = [v for v in model if v.version == 0]
    by_round = {r: [v for v in model if v.version == r] for r in (1, 2)}
    return [
        *first, ROUNDS[0], ROUNDS[1], ROUNDS[2], *by_round[1], ROUNDS[3],
        ROUNDS[4], *by_round[2], ROUNDS[5],
    ]  # fmt: skip


def interleaving(seed: int) -> list[Event]:
    """Every topic partition in its own order, partitions read in any order."""
    rng = random.Random(seed)
    queues = [list(ROUNDS), *(list(p) for p in MODEL)]
    out: list[Event] = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
    return out


def same(a: ExpertLoadState, b: ExpertLoadState) -> bool:
    names = ("assigned_clients", "accepted_updates", "clients_ewma", "samples_routed")
    arrays = all(np.array_equal(getattr(a, n), getattr(b, n)) for n in names)
    return (
        arrays
        and np.array_equal(a.rounds_since_update, b.rounds_since_update)
        and (a.rounds_closed == b.rounds_closed)
    )


def test_the_load_after_each_round_is_what_moe_load_gives_by_hand() -> None:
    outputs = feed(LoadMonitor(E), in_order())
    expected = reference()
    assert [c.round for c in outputs] == [0, 1, 2]
    for got, want in zip(outputs, expected, strict=True):
        assert same(got.load, want)
    last = outputs[-1].load
    assert last.rounds_closed == 3
    assert last.samples_routed.tolist() == [42.5, 5.0, 10.0, 0.0]
    assert last.rounds_since_update.tolist() == [0, 0, 1, 3]


@pytest.mark.parametrize("seed", range(60))
def test_any_read_order_of_the_topics_gives_the_same_loads(seed: int) -> None:
    outputs = feed(LoadMonitor(E), interleaving(seed))
    assert [c.round for c in outputs] == [0, 1, 2]
    for got, want in zip(outputs, reference(), strict=True):
        assert same(got.load, want)


def test_a_close_read_before_its_versions_waits_and_holds_what_follows() -> None:
    monitor = LoadMonitor(E)
    events = in_order()
    close1 = events.index(ROUNDS[3])
    pv = events[close1 - 3 : close1]  # round 1's versions
    assert [c.round for c in feed(monitor, events[: close1 - 3])] == [0]
    assert monitor.on_round_closed(ROUNDS[3], 0.0) == (Note.WAITING, [])
    assert monitor.on_round_opened(ROUNDS[4]) is Note.HELD
    assert monitor.on_round_closed(ROUNDS[3], 0.0) == (Note.REPEATED, [])
    outputs = feed(monitor, pv)
    assert [c.round for c in outputs] == [1]
    assert (monitor.round, monitor.open) == (2, True)  # the held RoundOpened(2) ran
    assert same(outputs[0].load, reference()[1])


def test_a_close_waits_at_most_close_wait_s_and_a_late_version_counts_next_round() -> None:
    monitor = LoadMonitor(E, close_wait_s=5.0)
    events = [e for e in in_order() if not (isinstance(e, PartVersion) and e.part == "expert-2")]
    late = [e for e in in_order() if isinstance(e, PartVersion) and e.part == "expert-2"]
    outputs = feed(monitor, events[: events.index(ROUNDS[3]) + 1], now=100.0)
    assert [c.round for c in outputs] == [0]
    assert monitor.on_tick(104.0) == (None, [])
    note, closed1 = monitor.on_tick(105.0)
    assert note is Note.CLOSE_TIMEOUT
    assert [c.round for c in closed1] == [1]
    assert closed1[0].load.samples_routed.tolist() == [30.0, 0.0, 0.0, 0.0]
    outputs = feed(monitor, late + events[events.index(ROUNDS[3]) + 1 :], now=106.0)
    assert [c.round for c in outputs] == [2]
    # expert-2's round-1 version was folded with round 2: the cumulative figures agree.
    assert outputs[0].load.samples_routed.tolist() == reference()[2].samples_routed.tolist()


def test_redelivery_after_a_restart_from_the_checkpoint_at_any_point(tmp_path: Path) -> None:
    events = interleaving(7)
    want = reference()
    for crash in range(len(events) + 1):
        first = LoadMonitor(E)
        before = feed(first, events[:crash])
        store = CheckpointStore(tmp_path / f"c{crash}.ckpt")
        store.save(checkpoint_data(first, "ns", None))
        data = store.load()
        assert data is not None
        second = LoadMonitor.from_dict(data["state"])
        after = feed(second, events)  # worst case: everything comes again
        rounds = [c.round for c in before + after]
        assert rounds == [0, 1, 2], f"crash after {crash}"
        for got, expected in zip(before + after, want, strict=True):
            assert same(got.load, expected)


def test_stale_and_repeated_events_change_nothing() -> None:
    monitor = LoadMonitor(E)
    feed(monitor, in_order())
    before = monitor.to_dict()
    assert monitor.on_round_opened(ROUNDS[2]) is Note.STALE
    assert monitor.on_round_closed(ROUNDS[5], 0.0) == (Note.STALE, [])
    assert monitor.on_part_version(version("expert-0", 1, 2, 30.0), 0.0) == (Note.REPEATED, [])
    assert monitor.on_part_version(version("shared", 5, 1, 1.0), 0.0) == (Note.NOT_EXPERT, [])
    after = monitor.to_dict()
    assert after.keys() == before.keys()
    assert {k: v for k, v in after.items() if k != "load"} == {
        k: v for k, v in before.items() if k != "load"
    }
    with pytest.raises(ValueError, match="out of range"):
        monitor.on_part_version(version("expert-9", 1, 1, 1.0), 0.0)


def test_the_start_trusts_a_checkpoint_only_when_the_topic_holds_what_it_published() -> None:
    monitor = LoadMonitor(E)
    outputs = feed(monitor, in_order())
    published = [
        expert_load_message(c.load, message_id=f"load:{c.round}", timestamp=10.0 + c.round,
                            round=c.round, device_id="load-monitor")
        for c in outputs
    ]  # fmt: skip
    data = checkpoint_data(monitor, "ns", (2, 12.0))
    start = choose_start(data, published, num_experts=E, alpha=0.5, close_wait_s=30.0)
    assert start.published == (2, 12.0)
    assert same(start.monitor.load, monitor.load)
    # An earlier life of the brokers: the topic is empty or older than what was published.
    for changelog in ([], published[:2]):
        fresh = choose_start(data, changelog, num_experts=E, alpha=0.5, close_wait_s=30.0)
        assert fresh.published is None
        assert fresh.monitor.round == -1
        assert "earlier life" in fresh.why
    assert choose_start(None, published, num_experts=E, alpha=0.5, close_wait_s=30.0).why
    with pytest.raises(CheckpointError, match="experts"):
        choose_start(data, published, num_experts=E + 1, alpha=0.5, close_wait_s=30.0)
    with pytest.raises(CheckpointError):
        choose_start({"published": None, "state": {"format": 99}}, [], num_experts=E,
                     alpha=0.5, close_wait_s=30.0)  # fmt: skip
