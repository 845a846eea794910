"""The load monitor counts every expert close with applied updates, as the simulation does,
also a close whose updates routed no samples to the expert (total weight 0): the aggregator then
makes no new version and re-publishes the current one with the round's contributors."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from moe.load import ExpertLoadState, on_assignment, on_part_closed, on_round_closed
from schemas.messages import PartClosed, PartVersion, RoundClosed, RoundOpened
from services.checkpoint import CheckpointStore
from services.load_monitor.restore import checkpoint_data
from services.load_monitor.state import ClosedRound, LoadMonitor, Note
from tests.unit.services.test_load_monitor_state import same

E = 4
W = {"w": np.zeros(2, dtype=np.float32)}

# Per round, per expert: (applied updates, their total weight = samples routed). A weight of 0
# with applied > 0 is the close without a new version.
PLAN: dict[int, dict[int, tuple[int, float]]] = {
    1: {0: (2, 30.0), 1: (1, 0.0), 2: (1, 12.0)},
    2: {0: (1, 0.0), 1: (2, 7.0), 3: (1, 0.0)},
    3: {0: (1, 4.0), 1: (1, 0.0), 2: (2, 0.0), 3: (1, 9.0)},
}

Event = RoundOpened | PartClosed | RoundClosed | PartVersion


@dataclass
class Run:
    """The records the matcher and the aggregator publish for `PLAN`, and the load by hand."""

    rounds: list[Event] = field(default_factory=list)  # `rounds`: one partition, in order
    model: dict[int, list[PartVersion]] = field(default_factory=dict)  # `model`, per expert
    loads: list[ExpertLoadState] = field(default_factory=list)  # after each RoundClosed


def run() -> Run:
    out = Run(model={e: [] for e in range(E)})
    versions = dict.fromkeys(range(E), 0)
    load = ExpertLoadState.empty(E)
    for r in range(len(PLAN) + 1):
        plan = PLAN.get(r, {})
        parts = {f"expert-{e}": plan.get(e, (0, 0.0))[0] for e in range(E)}
        out.rounds.append(
            RoundOpened(
                message_id=f"open-{r}",
                device_id="matcher",
                round=r,
                timestamp=1.0,
                deadline=2.0,
                strategy="fitness",
                devices=max(parts.values()),
                expected_parts={"shared": max(parts.values()), **parts},
                model_versions={f"expert-{e}": v for e, v in versions.items()},
            )
        )
        load = on_assignment(load, _columns([parts[f"expert-{e}"] for e in range(E)]))
        for e in range(E):
            applied, weight = plan.get(e, (0, 0.0))
            if weight > 0 or r == 0:
                versions[e] += int(r > 0)
            part = f"expert-{e}"
            # The aggregator's close: a PartVersion (new or not), then PartClosed on `rounds`.
            out.model[e].append(
                PartVersion(
                    message_id=f"{part}/v{versions[e]}/r{r}",
                    device_id="aggregator",
                    round=r,
                    timestamp=1.0,
                    part=part,
                    version=versions[e],
                    layout_version=1,
                    tensors=W,
                    contributors=applied,
                    samples=weight,
                )
            )
            out.rounds.append(
                PartClosed(
                    message_id=f"closed/{part}/r{r}",
                    device_id="aggregator",
                    round=r,
                    timestamp=1.0,
                    part=part,
                    version=versions[e],
                    applied=applied,
                    reason="quorum",
                )
            )
            if applied > 0:  # the simulation's rule: every part with applied updates
                load = on_part_closed(load, e, applied, weight)
        load = on_round_closed(load)
        out.loads.append(load)
        out.rounds.append(
            RoundClosed(
                message_id=f"close-{r}",
                device_id="matcher",
                round=r,
                timestamp=1.0,
                reason="quorum",
                parts_closed=E + 1,
                model_versions={f"expert-{e}": v for e, v in versions.items()},
            )
        )
    return out


def _columns(counts: list[int]) -> np.ndarray:
    """An assignment matrix with these column sums."""
    rows = max(counts, default=0)
    return np.arange(rows)[:, None] < np.asarray(counts)[None, :]


def feed(monitor: LoadMonitor, events: list[Event], now: float = 0.0) -> list[ClosedRound]:
    out: list[ClosedRound] = []
    for event in events:
        if isinstance(event, RoundOpened):
            monitor.on_round_opened(event)
        elif isinstance(event, PartClosed):
            monitor.on_part_closed(event)
        elif isinstance(event, RoundClosed):
            out += monitor.on_round_closed(event, now)[1]
        else:
            out += monitor.on_part_version(event, now)[1]
    return out


def interleaving(the_run: Run, seed: int) -> list[Event]:
    """Every partition in its own order, the partitions read in any order."""
    rng = random.Random(seed)
    queues: list[list[Event]] = [list(the_run.rounds)]
    queues += [list[Event](m) for m in the_run.model.values()]
    out: list[Event] = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
    return out


def causal(the_run: Run) -> list[Event]:
    """What the protocol produces in causal order: each close's PartVersion just before its
    PartClosed."""
    out: list[Event] = []
    for m in the_run.rounds:
        if isinstance(m, PartClosed):
            e = int(m.part.removeprefix("expert-"))
            out += [v for v in the_run.model[e] if v.round == m.round]
        out.append(m)
    return out


def test_the_plan_has_closes_without_a_new_version() -> None:
    zero = [v for m in run().model.values() for v in m if v.contributors and not v.samples]
    assert len(zero) == 5
    # Each re-publishes the version of an earlier close of its part.
    assert all(v.version < v.round for v in zero)


def test_a_close_without_a_new_version_counts_like_in_the_simulation() -> None:
    the_run = run()
    outputs = feed(LoadMonitor(E), causal(the_run))
    assert [c.round for c in outputs] == [0, 1, 2, 3]
    for got, want in zip(outputs, the_run.loads, strict=True):
        assert same(got.load, want)
    last = outputs[-1].load
    # expert-1 got applied updates in every round (one with samples): never starved.
    assert last.rounds_since_update.tolist() == [0, 0, 0, 0]
    assert last.samples_routed.tolist() == [34.0, 7.0, 12.0, 9.0]


@pytest.mark.parametrize("seed", range(60))
def test_any_read_order_gives_the_simulation_s_loads(seed: int) -> None:
    the_run = run()
    outputs = feed(LoadMonitor(E), interleaving(the_run, seed))
    assert [c.round for c in outputs] == [0, 1, 2, 3]
    for got, want in zip(outputs, the_run.loads, strict=True):
        assert same(got.load, want)


def test_a_round_closed_read_before_a_close_without_new_version_waits_for_it() -> None:
    the_run = run()
    monitor = LoadMonitor(E)
    # Round 0 and 1 wholly; round 2's ROUNDS records, and its MODEL records but expert-3's.
    zero = next(v for v in the_run.model[3] if v.round == 2)
    assert (zero.version, zero.contributors, zero.samples) == (0, 1, 0.0)
    model = [v for m in the_run.model.values() for v in m if v.round <= 2 and v is not zero]
    close2 = next(
        m for m in the_run.rounds if isinstance(m, RoundClosed) and m.round == 2
    )  # fmt: skip
    rounds = the_run.rounds[: the_run.rounds.index(close2)]
    assert [c.round for c in feed(monitor, model + rounds)] == [0, 1]
    assert monitor.on_round_closed(close2, 0.0) == (Note.WAITING, [])
    note, outputs = monitor.on_part_version(zero, 0.0)
    assert note is Note.VERSION_KEPT
    assert [c.round for c in outputs] == [2]
    assert same(outputs[0].load, the_run.loads[2])
    assert monitor.on_part_version(zero, 0.0) == (Note.REPEATED, [])


def test_part_closed_notes_only_closes_with_applied_updates_of_open_rounds() -> None:
    monitor = LoadMonitor(E)
    the_run = run()
    first = [m for m in the_run.rounds if isinstance(m, PartClosed) and m.round == 1]
    feed(monitor, [the_run.rounds[0], *the_run.model[0][:1]])
    assert monitor.on_part_closed(first[0]) is Note.CLOSE_NOTED
    assert monitor.on_part_closed(first[0]) is Note.REPEATED
    assert monitor.on_part_closed(first[3]) is Note.REPEATED  # expert-3: nothing applied
    shared = PartClosed(
        message_id="s", device_id="aggregator", round=1, timestamp=1.0, part="shared",
        version=1, applied=3, reason="quorum",
    )  # fmt: skip
    assert monitor.on_part_closed(shared) is Note.NOT_EXPERT
    with pytest.raises(ValueError, match="out of range"):
        monitor.on_part_closed(
            PartClosed(
                message_id="x",
                device_id="aggregator",
                round=1,
                timestamp=1.0,
                part=f"expert-{E}",
                version=1,
                applied=1,
                reason="quorum",
            )
        )
    feed(monitor, interleaving(the_run, 3))
    assert monitor.on_part_closed(first[0]) is Note.STALE  # round 1 is folded


def test_redelivery_after_a_restart_from_the_checkpoint_at_any_point(tmp_path: Path) -> None:
    the_run = run()
    events = interleaving(the_run, 11)
    for crash in range(len(events) + 1):
        first = LoadMonitor(E)
        before = feed(first, events[:crash])
        store = CheckpointStore(tmp_path / f"c{crash}.ckpt")
        store.save(checkpoint_data(first, "ns", None))
        data = store.load()
        assert data is not None
        second = LoadMonitor.from_dict(data["state"])
        after = feed(second, events)  # worst case: everything comes again
        assert [c.round for c in before + after] == [0, 1, 2, 3], f"crash after {crash}"
        for got, want in zip(before + after, the_run.loads, strict=True):
            assert same(got.load, want)


def test_a_format_1_checkpoint_is_read_and_nothing_is_counted_twice() -> None:
    the_run = run()
    events = causal(the_run)
    cut = events.index(next(m for m in events if isinstance(m, RoundClosed) and m.round == 1))
    first = LoadMonitor(E)
    before = feed(first, events[: cut + 1])
    assert [c.round for c in before] == [0, 1]
    # Format 1 kept closes by version alone, and knew nothing of PartClosed.
    data = first.to_dict()
    data["format"] = 1
    data["folded"] = {e: v for e, (v, _) in first.folded.items()}
    data["versions"] = {
        e: {v: [c, s] for (v, _), (c, s) in vs.items()} for e, vs in first.versions.items()
    }
    del data["closes"]
    second = LoadMonitor.from_dict(data)
    assert second.folded == {e: (v, 1) for e, (v, _) in first.folded.items()}
    after = feed(second, events)  # everything comes again
    assert [c.round for c in before + after] == [0, 1, 2, 3]
    for got, want in zip(before + after, the_run.loads, strict=True):
        assert same(got.load, want)
