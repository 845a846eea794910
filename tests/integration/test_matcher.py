"""The matcher against a real Kafka API (Tansu): the genesis round, a round closed by the
aggregators' PartClosed, the next round matched over the profiles announced for it (markers and
RoundOpened acknowledged before any Assignment), and a SIGKILLed matcher process that resumes
the open round instead of starting over."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from brokers.rebuild import ReplayedRecord, replay_topics
from brokers.settings import BrokerSettings
from fedmoe.scenario import ScenarioSettings
from moe.load import ExpertLoadState
from moe.matching import make_strategy
from moe.profiles import fold_telemetry
from moe.scenario import build_scenario
from moe.wire import expert_load_message, profile_snapshot
from schemas import encode
from schemas.messages import (
    Assignment,
    Message,
    PartClosed,
    ProfileSnapshot,
    RoundClosed,
    RoundOpened,
)
from schemas.topics import Topic
from services.matcher.app import matcher_service
from services.matcher.planning import MatchingContext, model_part_ids, plan_round
from services.matcher.settings import MatcherSettings
from services.runtime import RuntimeSettings
from tests.integration.programs.harness import (
    ServiceProcess,
    TopicCollector,
    broker_environ,
    produce,
)

DEVICES = 6
EXPERTS = 4
PARTS = model_part_ids(EXPERTS)
WALL_DEADLINE_S = 30.0
SIM_DEADLINE_S = 6.0  # long enough that most of the 6 devices can train something
SCENARIO = ScenarioSettings(
    devices=DEVICES,
    experts=EXPERTS,
    seed=5,
    deadline_s=SIM_DEADLINE_S,
    time_scale=WALL_DEADLINE_S / SIM_DEADLINE_S,
)
RUNTIME = RuntimeSettings(
    tick_interval_s=0.2, poll_timeout_s=0.2, session_timeout_s=6.0, drain_timeout_s=10.0
)
MATCHER = MatcherSettings(grace_s=1.0, open_delay_s=0.3, max_wait_s=20.0, max_rounds=1)


def snapshots(round_: int, offline: set[int]) -> list[ProfileSnapshot]:
    scenario = build_scenario(SCENARIO.config())
    out = []
    for i in range(DEVICES):
        profile = fold_telemetry(None, scenario.telemetry(i, scenario.initial_parts(), 1), now=1.0)
        profile = replace(profile, online=i not in offline)
        out.append(profile_snapshot(profile, message_id=f"p{i}", timestamp=1.0, round=round_))
    return out


def part_closed(round_: int, part: str, version: int) -> PartClosed:
    return PartClosed(
        message_id=f"pc-{round_}-{part}",
        device_id="aggregator",
        round=round_,
        timestamp=1.0,
        part=part,
        version=version,
        applied=0,
        reason="quorum",
    )


async def play_aggregators(broker: BrokerSettings, round_: int, version: int) -> None:
    topic = broker.topic_table().name(Topic.ROUNDS)
    await produce(
        broker, topic, [(b"round", encode(part_closed(round_, p, version))) for p in PARTS]
    )


async def announce_round(broker: BrokerSettings, round_: int, offline: set[int]) -> None:
    """Play the load monitor (ExpertLoad after the close) and the profiler (snapshots)."""
    table = broker.topic_table()
    load = expert_load_message(
        ExpertLoadState.empty(EXPERTS),
        message_id=f"load-{round_ - 1}",
        timestamp=1.0,
        round=round_ - 1,
        device_id="load-monitor",
    )
    await produce(broker, table.name(Topic.EXPERT_LOAD), [(b"load", encode(load))])
    records = [(s.device_id.encode(), encode(s)) for s in snapshots(round_, offline)]
    await produce(broker, table.name(Topic.PROFILES), records)


def rounds_of(messages: list[Message], kind: type[Message]) -> list[int]:
    return [m.round for m in messages if isinstance(m, kind)]


@pytest.mark.timeout(90)
async def test_genesis_then_a_matched_round_with_markers_before_assignments(
    broker_env: BrokerSettings,
) -> None:
    table = broker_env.topic_table()
    offline = {2}
    async with (
        TopicCollector(broker_env, table.name(Topic.ROUNDS)) as rounds,
        TopicCollector(broker_env, table.name(Topic.UPDATES)) as updates,
        TopicCollector(broker_env, table.name(Topic.ASSIGNMENTS)) as assignments,
        matcher_service(MATCHER, SCENARIO, broker_env, RUNTIME) as service,
    ):
        await rounds.wait_until(lambda ms: 0 in rounds_of(ms, RoundOpened), 30, "RoundOpened(0)")
        genesis = next(m for m in rounds.messages if isinstance(m, RoundOpened))
        assert isinstance(genesis, RoundOpened)
        assert genesis.devices == 0
        assert genesis.expected_parts == dict.fromkeys(PARTS, 0)
        await updates.wait_until(lambda ms: len(ms) >= len(PARTS), 20, "round 0 markers")
        assert sorted(k or b"" for k in updates.keys) == sorted(p.encode() for p in PARTS)

        await play_aggregators(broker_env, 0, 0)
        await rounds.wait_until(lambda ms: 0 in rounds_of(ms, RoundClosed), 20, "RoundClosed(0)")
        closed0 = next(m for m in rounds.messages if isinstance(m, RoundClosed))
        assert isinstance(closed0, RoundClosed)
        assert (closed0.reason, closed0.parts_closed) == ("parts-closed", len(PARTS))
        assert closed0.model_versions == dict.fromkeys(PARTS, 0)

        await announce_round(broker_env, 1, offline)
        await rounds.wait_until(lambda ms: 1 in rounds_of(ms, RoundOpened), 30, "RoundOpened(1)")
        opened = next(m for m in rounds.messages if isinstance(m, RoundOpened) and m.round == 1)
        assert isinstance(opened, RoundOpened)
        await assignments.wait_until(lambda ms: len(ms) >= opened.devices, 20, "assignments")
        await updates.wait_until(lambda ms: len(ms) >= 2 * len(PARTS), 20, "round 1 markers")
        await asyncio.sleep(0.5)  # nothing more may come: one assignment per device
        service.stop()
        await asyncio.wait_for(service.wait(), 20)
        got = {m.device_id: m for m in assignments.messages if isinstance(m, Assignment)}
        assert len(got) == len(assignments.messages)

    # What the simulation computes from the same profiles.
    scenario = build_scenario(SCENARIO.config())
    plan = plan_round(
        snapshots(1, offline),
        ExpertLoadState.empty(EXPERTS),
        round=1,
        context=MatchingContext.from_scenario(scenario),
        strategy=make_strategy(MATCHER.strategy),
    )
    assert plan.devices >= 3
    assert "dev-00002" not in plan.candidates
    assert opened.devices == plan.devices
    assert dict(opened.expected_parts) == plan.expected_parts(EXPERTS)
    assert opened.model_versions == dict.fromkeys(PARTS, 0)
    assert opened.deadline == pytest.approx(opened.timestamp + WALL_DEADLINE_S)
    assert {d: a.experts for d, a in got.items()} == dict(plan.experts)
    for a in got.values():
        assert (a.round, a.deadline) == (1, opened.deadline)
        assert a.model_versions == opened.model_versions

    # Ordering, read back with the records' Kafka timestamps: every marker and the RoundOpened
    # of round 1 were produced before the first Assignment.
    replay = await replay_topics(
        broker_env, [Topic.ROUNDS, Topic.UPDATES, Topic.ASSIGNMENTS], timeout_s=20
    )
    by_topic: dict[str, list[ReplayedRecord]] = {}
    for rec in replay.records:
        by_topic.setdefault(rec.topic, []).append(rec)
    first_assignment = min(r.timestamp_ms for r in by_topic[table.name(Topic.ASSIGNMENTS)])
    round1 = [
        r
        for t in (Topic.ROUNDS, Topic.UPDATES)
        for r in by_topic[table.name(t)]
        if isinstance(r.message, RoundOpened) and r.message.round == 1
    ]
    assert len(round1) == 1 + len(PARTS)
    assert max(r.timestamp_ms for r in round1) <= first_assignment
    # Never two rounds open, one close per round, max_rounds=1 stops there.
    assert rounds_of(rounds.messages, RoundOpened) == [0, 1]
    assert rounds_of(rounds.messages, RoundClosed) == [0]


@pytest.mark.timeout(120)
async def test_a_killed_matcher_resumes_the_open_round(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    table = broker_env.topic_table()
    env = broker_environ(
        broker_env,
        FEDMOE_SCENARIO_DEVICES=str(DEVICES),
        FEDMOE_SCENARIO_EXPERTS=str(EXPERTS),
        FEDMOE_SCENARIO_SEED="5",
        FEDMOE_SCENARIO_DEADLINE_S=str(SIM_DEADLINE_S),
        FEDMOE_SCENARIO_TIME_SCALE=str(WALL_DEADLINE_S / SIM_DEADLINE_S),
        FEDMOE_MATCHER_GRACE_S="1",
        FEDMOE_MATCHER_OPEN_DELAY_S="0.3",
        FEDMOE_MATCHER_MAX_ROUNDS="2",
        FEDMOE_MATCHER_GROUP_ID=f"matcher-{broker_env.namespace}",
        FEDMOE_RUNTIME_TICK_INTERVAL_S="0.2",
        FEDMOE_RUNTIME_POLL_TIMEOUT_S="0.2",
        FEDMOE_RUNTIME_SESSION_TIMEOUT_S="6",
    )
    argv = ["-m", "fedmoe.cli", "service", "matcher"]
    matcher = ServiceProcess(argv, env, tmp_path / "matcher.log")
    async with (
        TopicCollector(broker_env, table.name(Topic.ROUNDS)) as rounds,
        TopicCollector(broker_env, table.name(Topic.ASSIGNMENTS)) as assignments,
    ):
        try:
            await matcher.start()
            await rounds.wait_until(lambda ms: 0 in rounds_of(ms, RoundOpened), 40, "genesis")
            await play_aggregators(broker_env, 0, 0)
            await rounds.wait_until(lambda ms: 0 in rounds_of(ms, RoundClosed), 20, "close 0")
            await announce_round(broker_env, 1, offline=set())
            await rounds.wait_until(lambda ms: 1 in rounds_of(ms, RoundOpened), 30, "open 1")
            opened = next(m for m in rounds.messages if isinstance(m, RoundOpened) and m.round)
            assert isinstance(opened, RoundOpened)
            await assignments.wait_until(lambda ms: len(ms) >= opened.devices, 20, "assigned")
            await matcher.kill()  # round 1 is open

            await matcher.start()
            # The restarted matcher must neither reopen round 1 nor start over at round 0;
            # the aggregators' PartClosed of round 1 close it, exactly once.
            await play_aggregators(broker_env, 1, 1)
            await rounds.wait_until(lambda ms: 1 in rounds_of(ms, RoundClosed), 40, "close 1")
            closed1 = next(m for m in rounds.messages if isinstance(m, RoundClosed) and m.round)
            assert isinstance(closed1, RoundClosed)
            # Round 2 follows as usual after the restart.
            await announce_round(broker_env, 2, offline={0, 1})
            await rounds.wait_until(lambda ms: 2 in rounds_of(ms, RoundOpened), 30, "open 2")
            await asyncio.sleep(1.0)  # room for a wrong extra round event to show up
            assert await matcher.terminate() == 0
        except BaseException:
            print(matcher.log_text()[-6000:])
            raise
    assert closed1.reason == "parts-closed"
    assert closed1.model_versions == dict.fromkeys(PARTS, 1)
    assert rounds_of(rounds.messages, RoundOpened) == [0, 1, 2]
    assert rounds_of(rounds.messages, RoundClosed) == [0, 1]
    opened2 = next(m for m in rounds.messages if isinstance(m, RoundOpened) and m.round == 2)
    assert isinstance(opened2, RoundOpened)
    assert opened2.model_versions == dict.fromkeys(PARTS, 1)
    log = matcher.log_text()
    assert "resumed: latest opened 1, latest closed 0, open now 1" in log


@pytest.mark.timeout(90)
async def test_a_matcher_that_died_before_assigning_sends_the_assignments_on_restart(
    broker_env: BrokerSettings,
) -> None:
    """The log a matcher leaves when it dies between its RoundOpened and the assignments: the
    restarted one announces the round again and sends the same assignments, same deadline."""
    table = broker_env.topic_table()
    scenario = build_scenario(SCENARIO.config())
    plan = plan_round(
        snapshots(1, set()),
        ExpertLoadState.empty(EXPERTS),
        round=1,
        context=MatchingContext.from_scenario(scenario),
        strategy=make_strategy(MATCHER.strategy),
    )
    now = time.time()
    genesis = RoundOpened(
        message_id="round-opened-0",
        device_id="matcher",
        round=0,
        timestamp=now - 5,
        deadline=now - 5,
        strategy="fitness",
        devices=0,
        expected_parts=dict.fromkeys(PARTS, 0),
        model_versions=dict.fromkeys(PARTS, 0),
    )
    closed0 = RoundClosed(
        message_id="round-closed-0",
        device_id="matcher",
        round=0,
        timestamp=now - 4,
        reason="parts-closed",
        parts_closed=len(PARTS),
        model_versions=dict.fromkeys(PARTS, 0),
    )
    opened = RoundOpened(
        message_id="round-opened-1",
        device_id="matcher",
        round=1,
        timestamp=now - 1,
        deadline=now - 1 + WALL_DEADLINE_S,
        strategy="fitness",
        devices=plan.devices,
        expected_parts=plan.expected_parts(EXPERTS),
        model_versions=dict.fromkeys(PARTS, 0),
    )
    history = [genesis, *(part_closed(0, p, 0) for p in PARTS), closed0, opened]
    await produce(broker_env, table.name(Topic.ROUNDS), [(b"round", encode(m)) for m in history])
    await announce_round(broker_env, 1, offline=set())
    async with (
        TopicCollector(broker_env, table.name(Topic.ROUNDS)) as rounds,
        TopicCollector(broker_env, table.name(Topic.ASSIGNMENTS)) as assignments,
        matcher_service(MATCHER, SCENARIO, broker_env, RUNTIME) as service,
    ):
        await assignments.wait_until(lambda ms: len(ms) >= plan.devices, 30, "assignments")
        await asyncio.sleep(0.5)
        service.stop()
        await asyncio.wait_for(service.wait(), 20)
    got = {m.device_id: m for m in assignments.messages if isinstance(m, Assignment)}
    assert len(got) == len(assignments.messages) == plan.devices
    assert {d: a.experts for d, a in got.items()} == dict(plan.experts)
    assert {a.deadline for a in got.values()} == {opened.deadline}
    # The round was announced again (same message), not reopened as a new one, not closed.
    assert rounds_of(rounds.messages, RoundOpened) == [0, 1, 1]
    assert rounds.messages[-1] == opened
    assert rounds_of(rounds.messages, RoundClosed) == [0]
