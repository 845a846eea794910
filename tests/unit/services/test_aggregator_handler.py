"""The aggregator's state machine without brokers: records in, outputs out, checkpoints in a
temporary directory shared by handler instances as the real ones share theirs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from moe.aggregation import make_rule
from moe.tensors import PartLayout, TensorSpec
from schemas.messages import (
    DeviceStatus,
    Message,
    PartClosed,
    PartPayload,
    PartUpdate,
    PartVersion,
    RoundOpened,
    UpdateAck,
)
from schemas.topics import Topic
from services.aggregator.handler import AggregatorHandler
from services.aggregator.outputs import ack_id
from services.aggregator.store import CheckpointConflict, PartStore
from services.errors import InvalidPayload, RetryLater
from services.handler import InboundRecord, Outbound

pytestmark = pytest.mark.timeout(20)

LAYOUT: dict[str, PartLayout] = {
    "shared": {"w": TensorSpec((2, 3)), "b": TensorSpec((2,))},
    "expert-0": {"w": TensorSpec((3,))},
    # An expert with a gate row, as the model's experts have (`schemas.messages.GATE_TENSORS`).
    "expert-1": {
        "w": TensorSpec((3,)),
        "gate.weight": TensorSpec((3,)),
        "gate.bias": TensorSpec((1,)),
    },
}
PARTS = tuple(LAYOUT)
GRACE = 2.0
DEADLINE = 1000.0  # unix seconds of the test's round deadlines
TOPIC = "unit.updates"
Tensors = dict[str, NDArray[np.float32]]


def initial() -> dict[str, Tensors]:
    rng = np.random.default_rng(7)
    return {
        part: {n: rng.normal(size=s.shape).astype(np.float32) for n, s in layout.items()}
        for part, layout in LAYOUT.items()
    }


class Clock:
    def __init__(self, now: float = DEADLINE - 100) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_handler(directory: Path, clock: Clock | None = None, **kw: Any) -> AggregatorHandler:
    return AggregatorHandler(
        layout=LAYOUT,
        initial=initial(),
        layout_version=1,
        rule=kw.pop("rule", make_rule("fedavg")),
        store=PartStore(directory),
        grace_s=GRACE,
        ledger_window=4,
        clock=clock or Clock(),
        **kw,
    )


_offsets = itertools.count()


def record(
    message: Message, key: str | None, partition: int = 0, timestamp_ms: int | None = None
) -> InboundRecord:
    ts = int((DEADLINE - 50) * 1000) if timestamp_ms is None else timestamp_ms
    return InboundRecord(
        topic=TOPIC,
        partition=partition,
        offset=next(_offsets),
        key=key.encode() if key is not None else None,
        message=message,
        raw=b"",
        timestamp_ms=ts,
    )


def marker(
    round_: int,
    expected: Mapping[str, int],
    deadline: float = DEADLINE,
    assigned: Mapping[str, int] | None = None,
) -> RoundOpened:
    return RoundOpened(
        message_id=f"round-{round_}",
        device_id="matcher",
        round=round_,
        timestamp=1.0,
        deadline=deadline,
        strategy="fitness",
        devices=max(expected.values(), default=0),
        expected_parts=dict(expected),
        model_versions={},
        assigned=dict(assigned or {}),
    )


def update(
    device: str,
    part: str,
    tensors: Mapping[str, np.ndarray],
    *,
    round_: int = 1,
    weight: float = 1.0,
    base: int = 0,
    update_id: str | None = None,
) -> PartUpdate:
    uid = update_id or f"{device}-r{round_}"
    return PartUpdate(
        message_id=f"{uid}/{part}",
        device_id=device,
        round=round_,
        timestamp=1.0,
        update_id=uid,
        parts_total=1,
        num_samples=int(weight),
        payload=PartPayload(
            part=part, base_version=base, weight=weight, loss=0.5, tensors=dict(tensors)
        ),
    )


def trained(part: str, seed: int, base: Mapping[str, np.ndarray] | None = None) -> Tensors:
    """A device's 'trained' tensors of `part`: the base plus seeded noise."""
    rng = np.random.default_rng(seed)
    start = base if base is not None else initial()[part]
    return {
        n: (a + rng.normal(scale=0.1, size=a.shape)).astype(np.float32) for n, a in start.items()
    }


def reference_fedavg(
    updates: Sequence[tuple[Mapping[str, np.ndarray], float]],
) -> dict[str, NDArray[np.float64]]:
    """Σ wᵢ·uᵢ / Σ wᵢ in float64, computed directly (not through the streaming accumulator)."""
    weights = np.array([w for _, w in updates], dtype=np.float64)
    return {
        n: np.tensordot(weights, np.stack([u[n] for u, _ in updates]).astype(np.float64), 1)
        / weights.sum()
        for n in updates[0][0]
    }


def inodes(directory: Path) -> dict[str, int]:
    return {name: os.stat(directory / name).st_ino for name in os.listdir(directory)}


def of(outputs: Sequence[Outbound], cls: type[Any]) -> list[Any]:
    return [o.message for o in outputs if isinstance(o.message, cls)]


async def open_round(
    handler: AggregatorHandler,
    round_: int,
    expected: Mapping[str, int],
    partitions: Mapping[str, int] | None = None,
    deadline: float = DEADLINE,
) -> list[Outbound]:
    out: list[Outbound] = []
    for part in expected:
        partition = (partitions or {}).get(part, 0)
        out += await handler.handle(record(marker(round_, expected, deadline), part, partition))
    return out


# -- creation, genesis, quorum -----------------------------------------------------------------


async def test_first_marker_publishes_v0_first_and_genesis_closes_at_once(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    expected = dict.fromkeys(PARTS, 0)
    out = await handler.handle(record(marker(0, expected), "shared"))
    kinds = [(type(o.message).__name__, o.topic, o.key) for o in out]
    assert kinds == [
        ("PartVersion", Topic.MODEL, "shared"),  # v0, before anything else for the part
        ("PartVersion", Topic.MODEL, "shared"),  # the genesis round's (unchanged) result
        ("PartClosed", Topic.ROUNDS, "round"),
    ]
    v0, after = of(out, PartVersion)
    (closed,) = of(out, PartClosed)
    assert (v0.version, v0.round, v0.contributors, v0.layout_version) == (0, 0, 0, 1)
    for name, array in initial()["shared"].items():
        np.testing.assert_array_equal(v0.tensors[name], array)
    assert after.version == 0
    assert (closed.round, closed.part, closed.version, closed.applied, closed.reason) == (
        0, "shared", 0, 0, "quorum",
    )  # fmt: skip
    # A part that exists is not created again: the next round publishes no v0.
    again = await handler.handle(record(marker(1, {**expected, "shared": 2}), "shared"))
    assert again == []


async def test_part_closed_carries_the_gate_row_of_the_version_it_closed(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 0, "expert-0": 1, "expert-1": 1})
    out: list[Outbound] = []
    for part in ("expert-0", "expert-1"):
        out += await handler.handle(record(update("dev-1", part, trained(part, 3)), part))
    closed = {m.part: m for m in of(out, PartClosed)}
    versions = {m.part: m for m in of(out, PartVersion)}
    assert closed["expert-0"].gate == {}  # a part without a gate row
    row = closed["expert-1"].gate
    assert set(row) == {"gate.weight", "gate.bias"}
    assert closed["expert-1"].version == versions["expert-1"].version == 1
    for name, array in row.items():
        np.testing.assert_array_equal(array, versions["expert-1"].tensors[name])


async def test_quorum_close_publishes_the_weighted_average(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 3, "expert-0": 1, "expert-1": 1})
    sent = [(trained("shared", i), float(w)) for i, w in enumerate((10, 30, 5))]
    outputs: list[Outbound] = []
    for i, (tensors, weight) in enumerate(sent):
        outputs += await handler.handle(
            record(update(f"dev-{i}", "shared", tensors, weight=weight), "shared")
        )
    acks = of(outputs, UpdateAck)
    assert [a.status for a in acks] == ["applied"] * 3
    assert [(o.topic, o.key) for o in outputs if isinstance(o.message, UpdateAck)] == [
        (Topic.ACKS, f"dev-{i}") for i in range(3)
    ]
    assert all(a.device_id == f"dev-{i}" and a.round == 1 for i, a in enumerate(acks))
    (version,) = of(outputs, PartVersion)
    (closed,) = of(outputs, PartClosed)
    assert [o.message for o in outputs[-2:]] == [version, closed]
    want = reference_fedavg(sent)
    for name in LAYOUT["shared"]:
        assert version.tensors[name].dtype == np.float32
        np.testing.assert_allclose(version.tensors[name], want[name], rtol=1e-5, atol=1e-6)
    assert (version.version, version.contributors, version.samples) == (1, 3, 45.0)
    assert (closed.round, closed.version, closed.applied, closed.reason) == (1, 1, 3, "quorum")
    # Only the closed part moved on.
    assert handler.parts["shared"].open_round is None
    assert handler.parts["expert-0"].open_round == 1


async def test_every_verdict_is_acked_to_its_device(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 9, "expert-0": 2, "expert-1": 0})
    good = trained("expert-0", 1)
    nan = {"w": np.array([np.nan, 0, 0], dtype=np.float32)}
    wrong = {"w": np.zeros(4, dtype=np.float32)}
    cases = [
        (update("dev-1", "expert-0", good), "applied", ""),
        (update("dev-1", "expert-0", good), "duplicate", ""),
        (update("dev-2", "expert-0", good, base=3), "rejected", "unknown-version"),
        (update("dev-3", "expert-0", nan), "rejected", "non-finite"),
        (update("dev-4", "expert-0", wrong), "rejected", "wrong-shape"),
        (update("dev-5", "expert-1", trained("expert-1", 5)), "late", "round-closed"),
        (update("dev-6", "expert-0", good, round_=0), "late", "round-closed"),
    ]
    for message, status, reason in cases:
        out = await handler.handle(record(message, message.payload.part))
        (ack,) = of(out, UpdateAck)
        assert (ack.status, ack.reason) == (status, reason), message.message_id
        assert ack.device_id == message.device_id
        assert (ack.update_id, ack.part, ack.round) == (
            message.update_id, message.payload.part, message.round,
        )  # fmt: skip
        assert ack.message_id == ack_id(message, status)
    assert handler.stats["verdict/applied"] == 1
    assert handler.stats["verdict/rejected/non-finite"] == 1


async def test_update_of_a_part_not_in_the_model_is_rejected(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    message = update("dev-1", "expert-5", {"w": np.zeros(3, dtype=np.float32)})
    (ack,) = of(await handler.handle(record(message, "expert-5")), UpdateAck)
    assert (ack.status, ack.reason) == ("rejected", "unknown-part")


# -- lateness and deadlines --------------------------------------------------------------------


async def test_lateness_is_judged_by_the_record_timestamp(tmp_path: Path) -> None:
    clock = Clock(DEADLINE + 1.0)  # consumed after the deadline, but before deadline + grace
    handler = make_handler(tmp_path, clock)
    await open_round(handler, 1, {"shared": 3, "expert-0": 0, "expert-1": 0})
    on_time = update("dev-1", "shared", trained("shared", 1))
    late = update("dev-2", "shared", trained("shared", 2))
    ms = int(DEADLINE * 1000)
    out = list(await handler.handle(record(on_time, "shared", timestamp_ms=ms)))  # in time
    out += await handler.handle(record(late, "shared", timestamp_ms=ms + 1))
    # A resend of the applied update after the deadline counted: "duplicate", not "late".
    out += await handler.handle(record(on_time, "shared", timestamp_ms=ms + 5000))
    statuses = [(a.device_id, a.status, a.reason) for a in of(out, UpdateAck)]
    assert statuses == [
        ("dev-1", "applied", ""),
        ("dev-2", "late", "after-deadline"),
        ("dev-1", "duplicate", ""),
    ]
    assert handler.parts["shared"].aggregator.pending == 1


async def test_deadline_close_on_tick(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 5, "expert-0": 1, "expert-1": 0})
    sent = [(trained("shared", i), 2.0) for i in range(2)]
    for i, (tensors, weight) in enumerate(sent):
        await handler.handle(record(update(f"dev-{i}", "shared", tensors, weight=weight), "shared"))
    assert await handler.on_tick(DEADLINE + GRACE) == []  # not past deadline + grace yet
    out = await handler.on_tick(DEADLINE + GRACE + 0.1)
    closed = of(out, PartClosed)
    assert [(c.part, c.reason, c.applied, c.version) for c in closed] == [
        ("expert-0", "deadline", 0, 0),
        ("shared", "deadline", 2, 1),
    ]
    versions = {v.part: v for v in of(out, PartVersion)}
    want = reference_fedavg(sent)
    for name in LAYOUT["shared"]:
        np.testing.assert_allclose(versions["shared"].tensors[name], want[name], rtol=1e-5)
    assert await handler.on_tick(DEADLINE + 100) == []  # closed once


async def test_a_newer_marker_closes_the_round_left_open(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 3, "expert-0": 0, "expert-1": 0})
    await handler.handle(record(update("dev-1", "shared", trained("shared", 1)), "shared"))
    out = await handler.handle(record(marker(2, {"shared": 1}), "shared"))
    (closed,) = of(out, PartClosed)
    assert (closed.round, closed.reason, closed.applied, closed.version) == (1, "deadline", 1, 1)
    assert handler.parts["shared"].open_round == 2
    # Devices of round 2 train from version 1.
    base = dict(of(out, PartVersion)[0].tensors)
    out = await handler.handle(
        record(update("dev-2", "shared", trained("shared", 2, base), round_=2, base=1), "shared")
    )
    assert [m.applied for m in of(out, PartClosed)] == [1]


async def test_a_replayed_marker_changes_nothing(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 2, "expert-0": 0, "expert-1": 0})
    await handler.handle(record(update("dev-1", "shared", trained("shared", 1)), "shared"))
    assert await handler.handle(record(marker(1, {"shared": 2}), "shared")) == []
    assert await handler.handle(record(marker(0, {"shared": 0}), "shared")) == []
    assert handler.parts["shared"].aggregator.pending == 1


# -- malformed input ---------------------------------------------------------------------------


async def test_malformed_records_are_refused_for_the_dead_letter_topic(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 2, "expert-0": 1, "expert-1": 1})
    good = update("dev-1", "shared", trained("shared", 1))
    status = DeviceStatus(message_id="s", device_id="dev-1", round=1, timestamp=1.0, online=True)
    cases = [
        (record(status, "shared"), "unexpected-message"),
        (record(good, "expert-0"), "wrong-key"),
        (record(good, None), "wrong-key"),
        (record(marker(2, {"shared": 1}), "expert-7"), "bad-marker-key"),
        (record(marker(2, {"shared": 1}), "expert-0"), "marker-without-part"),
        (
            record(update("dev-1", "shared", trained("shared", 1), round_=5), "shared"),
            "future-round",
        ),
    ]
    for rec, reason in cases:
        with pytest.raises(InvalidPayload) as info:
            await handler.handle(rec)
        assert info.value.reason == reason
    # Nothing of that touched the parts.
    assert handler.parts["shared"].aggregator.pending == 0


async def test_update_of_a_part_never_opened_is_a_future_round(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    with pytest.raises(InvalidPayload) as info:
        await handler.handle(record(update("dev-1", "shared", trained("shared", 1)), "shared"))
    assert info.value.reason == "future-round"
    assert "shared" not in handler.parts
    assert os.listdir(tmp_path) == []


# -- checkpoints, restarts, replays ------------------------------------------------------------


async def test_duplicates_are_recognised_across_a_checkpoint_and_restore(tmp_path: Path) -> None:
    first = make_handler(tmp_path)
    await open_round(first, 1, {"shared": 3, "expert-0": 0, "expert-1": 0})
    sent = [(trained("shared", i), float(i + 1)) for i in range(3)]
    messages = [update(f"dev-{i}", "shared", t, weight=w) for i, (t, w) in enumerate(sent)]
    for m in messages[:2]:
        await first.handle(record(m, "shared"))
    await first.checkpoint()
    second = make_handler(tmp_path)  # a restart: nothing in memory
    (ack,) = of(await second.handle(record(messages[1], "shared")), UpdateAck)
    assert ack.status == "duplicate"
    out = await second.handle(record(messages[2], "shared"))
    (closed,) = of(out, PartClosed)
    assert closed.applied == 3
    (version,) = of(out, PartVersion)
    want = reference_fedavg(sent)
    for name in LAYOUT["shared"]:
        np.testing.assert_allclose(version.tensors[name], want[name], rtol=1e-5, atol=1e-6)


async def test_a_crash_before_the_checkpoint_replays_the_same_outputs(tmp_path: Path) -> None:
    """The runtime produces outputs, then checkpoints: a crash in between replays the batch
    against the previous checkpoint, and the replay says exactly what the first run said."""
    first = make_handler(tmp_path)
    await open_round(first, 1, {"shared": 2, "expert-0": 0, "expert-1": 0})
    await first.checkpoint()
    records = [
        record(update(f"dev-{i}", "shared", trained("shared", i), weight=i + 1.0), "shared")
        for i in range(2)
    ]
    said = [o for r in records for o in await first.handle(r)]  # ... then killed
    second = make_handler(tmp_path)
    again = [o for r in records for o in await second.handle(r)]
    assert [o.message.message_id for o in again] == [o.message.message_id for o in said]
    assert [type(o.message) for o in said] == [UpdateAck, UpdateAck, PartVersion, PartClosed]
    (first_version,), (replayed,) = of(said, PartVersion), of(again, PartVersion)
    for name in LAYOUT["shared"]:
        np.testing.assert_array_equal(first_version.tensors[name], replayed.tensors[name])


async def test_checkpoint_writes_only_changed_parts(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 2, "expert-0": 2, "expert-1": 2})
    await handler.checkpoint()
    before = inodes(tmp_path)
    assert sorted(before) == sorted(f"{p}.ckpt" for p in PARTS)
    await handler.handle(record(update("dev-1", "expert-1", trained("expert-1", 1)), "expert-1"))
    await handler.checkpoint()
    after = inodes(tmp_path)
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["expert-1.ckpt"]


async def test_a_corrupt_checkpoint_is_retried_not_acted_on(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    await open_round(handler, 1, {"shared": 2, "expert-0": 0, "expert-1": 0})
    await handler.checkpoint()
    (tmp_path / "shared.ckpt").write_bytes(b"\xc1 not msgpack")
    restarted = make_handler(tmp_path)
    with pytest.raises(RetryLater):
        await restarted.handle(record(update("dev-1", "shared", trained("shared", 1)), "shared"))


# -- parts moving between instances ------------------------------------------------------------


async def test_parts_move_between_instances_sharing_one_directory(tmp_path: Path) -> None:
    clock = Clock()
    a, b = make_handler(tmp_path, clock, name="a"), make_handler(tmp_path, clock, name="b")
    where = {"shared": 0, "expert-0": 1, "expert-1": 1}
    both = frozenset({(TOPIC, 0), (TOPIC, 1)})
    await a.on_partitions_assigned(both)
    await open_round(a, 1, {"shared": 2, "expert-0": 2, "expert-1": 2}, where)
    e0 = [(trained("expert-0", i), 1.0 + i) for i in range(2)]
    msgs = [update(f"dev-{i}", "expert-0", t, weight=w) for i, (t, w) in enumerate(e0)]
    await a.handle(record(msgs[0], "expert-0", partition=1))
    await a.checkpoint()
    # Rebalance: partition 1 moves to b.
    await a.on_partitions_revoked(both)
    await a.on_partitions_assigned(frozenset({(TOPIC, 0)}))
    await b.on_partitions_assigned(frozenset({(TOPIC, 1)}))
    assert sorted(a.parts) == ["shared"]
    assert sorted(b.parts) == ["expert-0", "expert-1"]  # loaded before any record of theirs
    assert b.parts["expert-0"].aggregator.pending == 1
    # b continues exactly where a stopped: a's update is a duplicate, the next one closes.
    (dup,) = of(await b.handle(record(msgs[0], "expert-0", partition=1)), UpdateAck)
    assert dup.status == "duplicate"
    out = await b.handle(record(msgs[1], "expert-0", partition=1))
    (closed,) = of(out, PartClosed)
    assert closed.applied == 2
    await b.checkpoint()
    # Past the deadline only the owner closes what is still open: a holds only "shared".
    a_closed = of(await a.on_tick(DEADLINE + GRACE + 1), PartClosed)
    assert [c.part for c in a_closed] == ["shared"]
    await a.checkpoint()
    # And back: a sees b's version, not the copy it held before.
    await b.on_partitions_revoked(frozenset({(TOPIC, 1)}))
    await a.on_partitions_revoked(frozenset({(TOPIC, 0)}))
    await a.on_partitions_assigned(both)
    assert a.parts["expert-0"].aggregator.version == 1
    assert a.parts["expert-0"].open_round is None
    b_closed = of(await a.on_tick(DEADLINE + GRACE + 1), PartClosed)
    assert [c.part for c in b_closed] == ["expert-1"]


async def test_a_copy_another_instance_advanced_is_reloaded(tmp_path: Path) -> None:
    a, b = make_handler(tmp_path, name="a"), make_handler(tmp_path, name="b")
    await open_round(a, 1, {"shared": 3, "expert-0": 0, "expert-1": 0})
    await a.checkpoint()
    first = update("dev-1", "shared", trained("shared", 1))
    # b meets the part (e.g. after a rebalance a never heard of) and applies an update.
    (ack,) = of(await b.handle(record(first, "shared")), UpdateAck)
    assert ack.status == "applied"
    await b.checkpoint()
    # a must not act on its stale copy (it would apply the update a second time).
    (again,) = of(await a.handle(record(first, "shared")), UpdateAck)
    assert again.status == "duplicate"
    assert a.stats["reloaded"] == 1
    assert a.parts["shared"].aggregator.pending == 1


async def test_two_writers_of_one_part_are_refused(tmp_path: Path) -> None:
    a, b = make_handler(tmp_path, name="a"), make_handler(tmp_path, name="b")
    await open_round(a, 1, {"shared": 3, "expert-0": 0, "expert-1": 0})
    await a.checkpoint()
    await a.handle(record(update("dev-1", "shared", trained("shared", 1)), "shared"))
    # Before a's checkpoint, b meets the part from a's file, applies and saves.
    await b.handle(record(update("dev-2", "shared", trained("shared", 2)), "shared"))
    await b.checkpoint()
    with pytest.raises(CheckpointConflict):
        await a.checkpoint()


# -- assignments from the marker --------------------------------------------------------------


def _verdicts(outs: Sequence[Outbound]) -> list[tuple[str, str]]:
    return [(o.message.status, o.message.reason) for o in outs if isinstance(o.message, UpdateAck)]


async def test_only_assigned_devices_within_their_cap_count(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    part = "expert-0"
    await handler.handle(record(marker(1, {part: 2}, assigned={"dev-a": 50, "dev-b": 10}), part))
    stranger = await handler.handle(record(update("dev-x", part, trained(part, 1)), part))
    greedy = await handler.handle(record(update("dev-b", part, trained(part, 2), weight=11), part))
    honest = await handler.handle(record(update("dev-a", part, trained(part, 3), weight=50), part))
    assert _verdicts(stranger) == [("rejected", "unassigned")]
    assert _verdicts(greedy) == [("rejected", "over-weight")]
    assert _verdicts(honest) == [("applied", "")]
    assert handler.parts[part].aggregator.pending == 1  # no quorum: 1 of 2 applied
    assert handler.stats["verdict/rejected/unassigned"] == 1


async def test_assignments_survive_a_restart_through_the_checkpoint(tmp_path: Path) -> None:
    part = "expert-1"
    first = make_handler(tmp_path)
    await first.handle(record(marker(1, {part: 2}, assigned={"dev-a": 5, "dev-b": 5}), part))
    await first.checkpoint()
    second = make_handler(tmp_path)  # a restart: loads the part from its file
    out = await second.handle(record(update("dev-x", part, trained(part, 1)), part))
    assert _verdicts(out) == [("rejected", "unassigned")]
    out = await second.handle(record(update("dev-a", part, trained(part, 2), weight=5), part))
    assert _verdicts(out) == [("applied", "")]


async def test_a_marker_without_assignments_checks_nothing(tmp_path: Path) -> None:
    handler = make_handler(tmp_path)
    part = "expert-1"
    await handler.handle(record(marker(1, {part: 1}), part))
    out = await handler.handle(record(update("anyone", part, trained(part, 1), weight=1e6), part))
    assert _verdicts(out) == [("applied", "")]
