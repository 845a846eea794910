"""The aggregator against real brokers: a round over the bus gives the reference FedAvg, and a
SIGKILL mid-round loses no update and applies none twice."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from brokers.settings import BrokerSettings
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import load_settings
from moe.parts import part_ids
from moe.scenario import build_scenario
from schemas import (
    Message,
    PartClosed,
    PartPayload,
    PartUpdate,
    PartVersion,
    RoundOpened,
    UpdateAck,
    encode,
)
from schemas.topics import Topic
from services.aggregator.app import build_handler, build_runtime
from services.aggregator.settings import AggregatorSettings
from services.runtime import RuntimeSettings
from tests.integration.programs.harness import (
    ServiceProcess,
    TopicCollector,
    broker_environ,
    committed_offsets,
    kafka_producer,
)

# A small world: 3 parts (shared, expert-0, expert-1); cheap to build in the test and the service.
SCENARIO_ENV = {
    "FEDMOE_SCENARIO_REGIME": "label-skew",
    "FEDMOE_SCENARIO_DEVICES": "4",
    "FEDMOE_SCENARIO_EXPERTS": "2",
    "FEDMOE_SCENARIO_SEED": "3",
}
Tensors = dict[str, NDArray[np.float32]]
Record = tuple[bytes, bytes, int | None]  # key, value, Kafka timestamp (ms) or None for now


def scenario(env: Mapping[str, str] = SCENARIO_ENV) -> ScenarioSettings:
    return load_settings(ScenarioSettings, env)


def initial_parts(env: Mapping[str, str] = SCENARIO_ENV) -> dict[str, Tensors]:
    return build_scenario(scenario(env).config()).initial_parts()


def marker(
    round_: int,
    expected: Mapping[str, int],
    deadline: float,
    assigned: Mapping[str, int] | None = None,
) -> RoundOpened:
    return RoundOpened(
        message_id=f"round-{round_}", device_id="matcher", round=round_, timestamp=time.time(),
        deadline=deadline, strategy="test", devices=max(expected.values(), default=0),
        expected_parts=dict(expected), model_versions=dict.fromkeys(expected, 0),
        assigned=dict(assigned or {}),
    )  # fmt: skip


def markers(
    round_: int,
    expected: Mapping[str, int],
    deadline: float,
    assigned: Mapping[str, int] | None = None,
) -> list[Record]:
    """One round marker per part, keyed by the part (what the matcher produces to updates),
    each naming `assigned` (device -> weight cap) when given."""
    value = encode(marker(round_, expected, deadline, assigned))
    return [(part.encode(), value, None) for part in expected]


def part_update(
    device: str, part: str, tensors: Tensors, weight: float, round_: int = 1, base: int = 0
) -> PartUpdate:
    uid = f"{device}-r{round_}"
    return PartUpdate(
        message_id=f"{uid}/{part}", device_id=device, round=round_, timestamp=time.time(),
        update_id=uid, parts_total=3, num_samples=int(weight),
        payload=PartPayload(part=part, base_version=base, weight=weight, loss=0.3, tensors=tensors),
    )  # fmt: skip


def trained(base: Tensors, rng: np.random.Generator) -> Tensors:
    return {
        n: (a + rng.normal(scale=0.05, size=a.shape)).astype(np.float32) for n, a in base.items()
    }


def reference_fedavg(
    updates: Sequence[tuple[Mapping[str, np.ndarray], float]],
) -> dict[str, NDArray[np.float64]]:
    """Σ wᵢ·uᵢ / Σ wᵢ in float64, directly over the distinct updates."""
    weights = np.array([w for _, w in updates], dtype=np.float64)
    return {
        n: np.tensordot(weights, np.stack([u[n] for u, _ in updates]).astype(np.float64), 1)
        / weights.sum()
        for n in updates[0][0]
    }


async def produce(broker: BrokerSettings, records: Sequence[Record]) -> None:
    topic = broker.topic_table().name(Topic.UPDATES)
    async with kafka_producer(broker) as producer:
        acks = [await producer.send(topic, value=v, key=k, timestamp_ms=ts) for k, v, ts in records]
        await asyncio.wait_for(asyncio.gather(*acks), 30)


def closed_parts(messages: Sequence[Message], round_: int) -> set[str]:
    return {m.part for m in messages if isinstance(m, PartClosed) and m.round == round_}


def check_weights(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], array, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.timeout(90)
async def test_a_round_over_the_bus_gives_the_reference_fedavg(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    table = broker_env.topic_table()
    parts = part_ids(build_scenario(scenario().config()).model)
    base = initial_parts()
    rng = np.random.default_rng(11)
    n_devices, now = 6, time.time()
    deadline = now + 60
    sent: dict[str, list[tuple[Tensors, float]]] = {"shared": [], "expert-0": []}
    records = markers(0, dict.fromkeys(parts, 0), now)
    records += markers(1, {"shared": n_devices, "expert-0": n_devices, "expert-1": 0}, deadline)
    late = part_update("dev-late", "shared", trained(base["shared"], rng), 50.0)
    for i in range(n_devices):
        for part in sent:
            tensors, weight = trained(base[part], rng), float(rng.integers(1, 60))
            sent[part].append((tensors, weight))
            records.append(
                (part.encode(), encode(part_update(f"dev-{i}", part, tensors, weight)), None)
            )
        if i == 2:  # received by the gateway 5 s after the deadline
            records.append((b"shared", encode(late), int((deadline + 5) * 1000)))
    settings = AggregatorSettings(
        checkpoint_dir=tmp_path, group_id=f"{broker_env.namespace}-agg", grace_s=1.0
    )
    handler = build_handler(settings, scenario(), broker_env)
    runtime = build_runtime(
        handler, settings, broker_env,
        RuntimeSettings(poll_timeout_s=0.2, tick_interval_s=0.2, session_timeout_s=6.0),
    )  # fmt: skip
    async with (
        TopicCollector(broker_env, table.name(Topic.ACKS)) as acks,
        TopicCollector(broker_env, table.name(Topic.MODEL)) as model,
        TopicCollector(broker_env, table.name(Topic.ROUNDS)) as rounds,
        runtime,
    ):
        await produce(broker_env, records)
        await rounds.wait_until(lambda ms: closed_parts(ms, 1) == set(parts), 45, "round 1 closed")
        await acks.wait_until(lambda ms: len(ms) >= 2 * n_devices + 1, 10, "every ack")
        published = {(p, 0) for p in parts} | {(p, 1) for p in sent}
        await model.wait_until(
            lambda ms: published <= {(m.part, m.version) for m in ms if isinstance(m, PartVersion)},
            10,
            "v0 of every part and v1 of the trained ones read back",
        )
        runtime.stop()
        await asyncio.wait_for(runtime.wait(), 20)
    ack_status = Counter(
        (a.device_id, a.part, a.status, a.reason) for a in acks.messages if isinstance(a, UpdateAck)
    )
    assert ack_status == Counter(
        {(f"dev-{i}", p, "applied", ""): 1 for i in range(n_devices) for p in sent}
        | {("dev-late", "shared", "late", "after-deadline"): 1}
    )
    assert acks.keys == [a.device_id.encode() for a in acks.messages]
    closes = {m.part: m for m in rounds.messages if isinstance(m, PartClosed) and m.round == 1}
    assert {p: (c.applied, c.version, c.reason) for p, c in closes.items()} == {
        "shared": (n_devices, 1, "quorum"),
        "expert-0": (n_devices, 1, "quorum"),
        "expert-1": (0, 0, "quorum"),
    }
    versions: dict[str, list[PartVersion]] = defaultdict(list)
    for m in model.messages:
        assert isinstance(m, PartVersion)
        versions[m.part].append(m)
    for part in parts:
        first = versions[part][0]
        assert (first.version, first.round) == (0, 0), "v0 is published before anything else"
        check_weights(first.tensors, base[part])
    for part, updates in sent.items():
        (v1,) = [v for v in versions[part] if v.version == 1]
        check_weights(v1.tensors, reference_fedavg(updates))
        assert v1.contributors == n_devices
        assert v1.samples == pytest.approx(sum(w for _, w in updates))
    committed = await committed_offsets(broker_env, settings.group_id, table.name(Topic.UPDATES))
    assert sum(committed.values()) == len(records)


# -- the restart test --------------------------------------------------------------------------

N_DEVICES = 60  # × 3 parts = 180 distinct part updates
N_RESENT = 20  # + 20 resent copies = 200 records


def fedmoe_argv() -> list[str]:
    """`.venv/bin/fedmoe service aggregator`, run by the venv's interpreter."""
    return [str(Path(sys.executable).parent / "fedmoe"), "service", "aggregator"]


def applied_acks(messages: Sequence[Message]) -> set[str]:
    return {m.message_id for m in messages if isinstance(m, UpdateAck) and m.status == "applied"}


@pytest.mark.timeout(120)
async def test_sigkill_mid_round_loses_no_update_and_applies_none_twice(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    table = broker_env.topic_table()
    parts = ("shared", "expert-0", "expert-1")
    base = initial_parts()
    rng = np.random.default_rng(5)
    distinct: dict[tuple[str, str], tuple[PartUpdate, bytes]] = {}
    for i in range(N_DEVICES):
        for part in parts:
            message = part_update(
                f"dev-{i:03d}", part, trained(base[part], rng), float(rng.integers(1, 50))
            )
            distinct[(message.update_id, part)] = (message, encode(message))
    order = list(distinct)  # production order, device by device
    picker = random.Random(5)
    resent = picker.sample(order, N_RESENT)
    for key in resent:  # a resend lands later in the stream than its original, some across the kill
        order.insert(picker.randrange(order.index(key) + 1, len(order) + 1), key)
    stream: list[Record] = [(key[1].encode(), distinct[key][1], None) for key in order]
    # Most of the stream before the kill, so that it lands while records are being worked on;
    # the rest while the service is down.
    first_half, second_half = stream[:150], stream[150:]
    # Devices the round never assigned, sent after the restart: their refusal proves the
    # round's assignments came back from the checkpoint.
    strangers = [
        part_update(f"intruder-{k}", part, trained(base[part], rng), 1.0)
        for k, part in enumerate(parts)
    ]
    # First after the restart, while every part still waits for its quorum (else: late).
    second_half = [(m.payload.part.encode(), encode(m), None) for m in strangers] + second_half
    now = time.time()
    assigned = {f"dev-{i:03d}": 50 for i in range(N_DEVICES)}
    opening = markers(0, dict.fromkeys(parts, 0), now)
    opening += markers(1, dict.fromkeys(parts, N_DEVICES), now + 300, assigned)
    env = broker_environ(
        broker_env,
        **SCENARIO_ENV,
        FEDMOE_AGGREGATOR_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        FEDMOE_AGGREGATOR_GROUP_ID=f"{broker_env.namespace}-agg",
        FEDMOE_RUNTIME_MAX_BATCH="4",
        FEDMOE_RUNTIME_SESSION_TIMEOUT_S="6",
        FEDMOE_RUNTIME_METRICS_INTERVAL_S="2",
    )
    service = ServiceProcess(fedmoe_argv(), env, tmp_path / "aggregator.log")
    async with (
        TopicCollector(broker_env, table.name(Topic.ACKS)) as acks,
        TopicCollector(broker_env, table.name(Topic.MODEL)) as model,
        TopicCollector(broker_env, table.name(Topic.ROUNDS)) as rounds,
        TopicCollector(broker_env, table.name(Topic.DEAD_LETTER)) as letters,
    ):
        try:
            await produce(broker_env, opening + first_half)
            await service.start()
            await acks.wait_until(lambda ms: len(applied_acks(ms)) >= 20, 40, "20 applied acks")
            await service.kill()
            applied_at_kill = len(applied_acks(acks.messages))
            closed_at_kill = closed_parts(rounds.messages, 1)
            group, updates_topic = f"{broker_env.namespace}-agg", table.name(Topic.UPDATES)
            committed_at_kill = sum(
                (await committed_offsets(broker_env, group, updates_topic)).values()
            )
            await produce(broker_env, second_half)
            restarted = time.monotonic()
            await service.start()
            await rounds.wait_until(lambda ms: closed_parts(ms, 1) == set(parts), 60, "round 1")
            took_s = time.monotonic() - restarted
            await acks.wait_until(
                lambda ms: len({(a.update_id, a.part) for a in ms if isinstance(a, UpdateAck)})
                >= len(distinct) + len(strangers), 20, "an ack of every update",
            )  # fmt: skip
            assert await service.terminate() == 0
        except BaseException:
            print(service.log_text()[-6000:])
            raise
        await asyncio.sleep(0)
    intruders = {m.update_id for m in strangers}
    refused = [
        (a.status, a.reason)
        for a in acks.messages
        if isinstance(a, UpdateAck) and a.update_id in intruders
    ]
    assert len(refused) >= len(strangers)
    assert set(refused) == {("rejected", "unassigned")}
    ack_messages = [
        a for a in acks.messages if isinstance(a, UpdateAck) and a.update_id not in intruders
    ]
    by_update: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for a in ack_messages:
        by_update[(a.update_id, a.part)][a.status].add(a.message_id)
    raw = Counter(a.status for a in ack_messages)
    report = (
        f"\naggregator SIGKILL: {len(distinct)} distinct updates, {len(stream)} records "
        f"({N_RESENT} resent); killed after {applied_at_kill} applied acks with "
        f"{len(opening) + len(first_half) - committed_at_kill} records not yet committed; "
        f"round closed {took_s:.1f}s after the restart; ack records {dict(raw)}, "
        f"distinct applied ack ids "
        f"{sum(len(s['applied']) for s in by_update.values())}"
    )
    print(report)
    assert closed_at_kill == set(), "the kill must land mid-round"
    assert 0 < applied_at_kill < len(distinct)
    assert letters.messages == []
    # Every distinct update has exactly one applied ack (replays reuse its id), and no other
    # verdict than duplicate; every resent one was answered duplicate at least once.
    assert set(by_update) == set(distinct)
    for key, statuses in by_update.items():
        assert len(statuses["applied"]) == 1, (key, statuses)
        assert set(statuses) <= {"applied", "duplicate"}, (key, statuses)
    assert all(by_update[key]["duplicate"] for key in resent)
    # Applied exactly once: the count and the weights of every part.
    closes = [m for m in rounds.messages if isinstance(m, PartClosed) and m.round == 1]
    assert {(c.part, c.applied, c.version, c.reason) for c in closes} == {
        (p, N_DEVICES, 1, "quorum") for p in parts
    }
    for part in parts:
        updates = [
            (m.payload.tensors, m.payload.weight)
            for (_, p), (m, _) in distinct.items()
            if p == part
        ]
        v1 = [
            m
            for m in model.messages
            if isinstance(m, PartVersion) and m.part == part and m.version == 1
        ]
        assert v1, part
        for version in v1:  # a replayed close says the same
            check_weights(version.tensors, reference_fedavg(updates))
    committed = await committed_offsets(
        broker_env, f"{broker_env.namespace}-agg", table.name(Topic.UPDATES)
    )
    assert sum(committed.values()) == len(opening) + len(stream) + len(strangers)


# -- two instances -----------------------------------------------------------------------------


def round_updates(
    round_: int, base: Mapping[str, Tensors], version: int, seed: int
) -> dict[tuple[str, str], PartUpdate]:
    """Every device's update of every part for `round_`, trained from `base` at `version`."""
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, str], PartUpdate] = {}
    for i in range(N_DEVICES):
        for part, tensors in base.items():
            weight = float(rng.integers(1, 50))
            message = part_update(
                f"dev-{i:03d}", part, trained(tensors, rng), weight, round_, version
            )
            out[(message.update_id, part)] = message
    return out


async def log_says(process: ServiceProcess, text: str, timeout_s: float) -> None:
    """Wait until `text` appears in the process's log (polled; AssertionError on timeout)."""
    try:
        async with asyncio.timeout(timeout_s):
            while text not in process.log_text():
                assert not process.exited(), f"exited: {process.log_text()[-2000:]}"
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"no {text!r} in the log after {timeout_s}s") from None


def records_of(updates: Mapping[tuple[str, str], PartUpdate]) -> list[Record]:
    return [(part.encode(), encode(m), None) for (_, part), m in updates.items()]


@pytest.mark.timeout(120)
async def test_two_instances_share_the_parts_and_hand_them_over(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    """A second instance joins mid-round (the parts are split), then the first leaves after
    the round: every part continues from the state the other instance checkpointed."""
    table = broker_env.topic_table()
    # 3 experts: expert-2's key lands in partition 1, the others' in 5..7, so any split of the
    # 8 partitions between two members gives each of them parts.
    scenario_env = {**SCENARIO_ENV, "FEDMOE_SCENARIO_EXPERTS": "3"}
    parts = ("shared", "expert-0", "expert-1", "expert-2")
    rounds_1 = round_updates(1, initial_parts(scenario_env), 0, seed=21)
    stream = records_of(rounds_1)
    now = time.time()
    opening = markers(0, dict.fromkeys(parts, 0), now)
    opening += markers(1, dict.fromkeys(parts, N_DEVICES), now + 300)
    env = broker_environ(
        broker_env,
        **scenario_env,
        FEDMOE_AGGREGATOR_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        FEDMOE_AGGREGATOR_GROUP_ID=f"{broker_env.namespace}-agg",
        FEDMOE_RUNTIME_MAX_BATCH="4",
        FEDMOE_RUNTIME_SESSION_TIMEOUT_S="6",
    )
    first = ServiceProcess(
        fedmoe_argv(), {**env, "FEDMOE_AGGREGATOR_INSTANCE_ID": "agg-a"}, tmp_path / "a.log"
    )
    second = ServiceProcess(
        fedmoe_argv(), {**env, "FEDMOE_AGGREGATOR_INSTANCE_ID": "agg-b"}, tmp_path / "b.log"
    )
    async with (
        TopicCollector(broker_env, table.name(Topic.ACKS)) as acks,
        TopicCollector(broker_env, table.name(Topic.MODEL)) as model,
        TopicCollector(broker_env, table.name(Topic.ROUNDS)) as rounds,
        TopicCollector(broker_env, table.name(Topic.DEAD_LETTER)) as letters,
    ):
        try:
            await produce(broker_env, opening + stream[:100])
            await first.start()
            await acks.wait_until(lambda ms: len(applied_acks(ms)) >= 30, 40, "30 applied acks")
            await second.start()  # the group rebalances mid-round: the parts are split
            await log_says(second, "agg-b: assigned", 40)
            await produce(broker_env, stream[100:])
            await rounds.wait_until(lambda ms: closed_parts(ms, 1) == set(parts), 60, "round 1")
            assert await first.terminate() == 0  # its parts move to the second instance
            v1 = {
                m.part: dict(m.tensors)
                for m in model.messages
                if isinstance(m, PartVersion) and m.version == 1
            }
            rounds_2 = round_updates(2, v1, 1, seed=22)
            await produce(
                broker_env,
                markers(2, dict.fromkeys(parts, N_DEVICES), time.time() + 300)
                + records_of(rounds_2),
            )
            await rounds.wait_until(lambda ms: closed_parts(ms, 2) == set(parts), 60, "round 2")
            assert await second.terminate() == 0
        except BaseException:
            print(first.log_text()[-4000:], second.log_text()[-4000:])
            raise
        finally:
            await first.kill()
            await second.kill()
    b_log = second.log_text()
    statuses = Counter(m.status for m in acks.messages if isinstance(m, UpdateAck))
    print(
        f"\naggregator hand-over: agg-b took over {b_log.count('took over')} parts at its "
        f"assignments; ack records {dict(statuses)}"
    )
    assert letters.messages == []
    for round_, updates, version in ((1, rounds_1, 1), (2, rounds_2, 2)):
        closes = {
            (m.part, m.applied, m.version, m.reason)
            for m in rounds.messages
            if isinstance(m, PartClosed) and m.round == round_
        }
        assert closes == {(p, N_DEVICES, version, "quorum") for p in parts}, round_
        ack_ids: dict[tuple[str, str], set[str]] = defaultdict(set)
        for a in acks.messages:
            if isinstance(a, UpdateAck) and a.round == round_ and a.status == "applied":
                ack_ids[(a.update_id, a.part)].add(a.message_id)
        assert {k: len(v) for k, v in ack_ids.items()} == dict.fromkeys(updates, 1)
        for part in parts:
            want = reference_fedavg(
                [
                    (m.payload.tensors, m.payload.weight)
                    for (_, p), m in updates.items()
                    if p == part
                ]
            )
            made = [
                m for m in model.messages
                if isinstance(m, PartVersion) and m.part == part and m.version == version
            ]  # fmt: skip
            assert made, (part, version)
            for message in made:
                check_weights(message.tensors, want)
    # The second instance resumed parts mid-round from the first one's checkpoints.
    assert "(round 1 open)" in b_log
