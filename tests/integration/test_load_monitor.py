"""The load monitor as a real `fedmoe service load-monitor` process on Tansu: rounds and part
versions read in whatever order the partitions hand them out give the ExpertLoad `moe.load`
computes by hand; a process SIGKILLed mid-stream, and one restarted with every input again,
continue from the checkpoint without counting anything twice."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from brokers.settings import BrokerSettings
from moe.load import ExpertLoadState, on_assignment, on_part_closed, on_round_closed
from moe.wire import expert_load_message
from schemas import encode
from schemas.messages import ExpertLoad, Message, PartVersion, RoundClosed, RoundOpened
from schemas.topics import Topic
from tests.integration.programs.harness import (
    ServiceProcess,
    TopicCollector,
    broker_environ,
    produce,
)

E = 4
DEVICES = 5
ARGV = ["-m", "fedmoe.cli", "service", "load-monitor"]
TENSORS = {"w": np.zeros(3, dtype=np.float32)}


@dataclass
class Run:
    """A run of rounds as the matcher and the aggregators would publish it, and its load."""

    versions: dict[str, int] = field(default_factory=lambda: {"shared": 0})
    load: ExpertLoadState = field(default_factory=lambda: ExpertLoadState.empty(E))
    expected: dict[int, ExpertLoad] = field(default_factory=dict)  # round → by hand

    def __post_init__(self) -> None:
        self.versions.update({f"expert-{e}": 0 for e in range(E)})

    def round(self, r: int) -> tuple[list[Message], list[PartVersion]]:
        """Round r's ROUNDS records and MODEL records; the expected load is noted."""
        x = np.zeros((DEVICES, E), dtype=bool)
        if r > 0:
            for d in range(DEVICES):
                x[d, [(d + r) % E, (d * r) % E]] = True
        counts = x.sum(axis=0)
        opened = RoundOpened(
            message_id=f"open-{r}", device_id="matcher", round=r, timestamp=1.0, deadline=2.0,
            strategy="fitness", devices=int(x.any(axis=1).sum()),
            expected_parts={"shared": int(x.any(axis=1).sum()),
                            **{f"expert-{e}": int(counts[e]) for e in range(E)}},
            model_versions=dict(self.versions),
        )  # fmt: skip
        model: list[PartVersion] = []
        self.load = on_assignment(self.load, x)
        for e in range(E):
            contributors = int(counts[e]) - (1 if (r + e) % 5 == 0 else 0)  # one was late
            if contributors <= 0:
                continue
            samples = 10.0 * contributors + e + r / 8
            part = f"expert-{e}"
            self.versions[part] += 1
            model.append(self._version(part, r, contributors, samples))
            self.load = on_part_closed(self.load, e, contributors, samples)
        if r > 0:
            self.versions["shared"] += 1
            model.append(self._version("shared", r, int(x.any(axis=1).sum()), 50.0))
        self.load = on_round_closed(self.load)
        closed = RoundClosed(
            message_id=f"close-{r}", device_id="matcher", round=r, timestamp=1.0,
            reason="quorum", parts_closed=E + 1, model_versions=dict(self.versions),
        )  # fmt: skip
        self.expected[r] = expert_load_message(
            self.load, message_id=f"load:{r}", timestamp=0.0, round=r, device_id="load-monitor"
        )
        return [opened, closed], model

    def _version(self, part: str, r: int, contributors: int, samples: float) -> PartVersion:
        return PartVersion(
            message_id=f"{part}@{self.versions[part]}", device_id="aggregator", round=r,
            timestamp=1.0, part=part, version=self.versions[part], layout_version=1,
            tensors=TENSORS, contributors=contributors, samples=samples,
        )  # fmt: skip

    def genesis(self) -> list[PartVersion]:
        return [self._version(p, 0, 0, 0.0) for p in sorted(self.versions)]


def _env(broker: BrokerSettings, checkpoints: Path) -> dict[str, str]:
    return broker_environ(
        broker,
        FEDMOE_SCENARIO_EXPERTS=str(E),
        FEDMOE_LOAD_MONITOR_CHECKPOINT_DIR=str(checkpoints),
        FEDMOE_RUNTIME_MAX_BATCH="5",
        FEDMOE_RUNTIME_POLL_TIMEOUT_S="0.2",
        FEDMOE_RUNTIME_TICK_INTERVAL_S="0.2",
        FEDMOE_RUNTIME_SESSION_TIMEOUT_S="6",
        FEDMOE_RUNTIME_METRICS_INTERVAL_S="2",
    )


async def _publish(
    broker: BrokerSettings, rounds: Sequence[Message], model: Sequence[PartVersion]
) -> None:
    table = broker.topic_table()
    await produce(broker, table.name(Topic.ROUNDS), [(b"round", encode(m)) for m in rounds])
    await produce(broker, table.name(Topic.MODEL), [(m.part.encode(), encode(m)) for m in model])


def _loads(messages: list[Message]) -> list[ExpertLoad]:
    return [m for m in messages if isinstance(m, ExpertLoad)]


def _check(published: list[ExpertLoad], run: Run, rounds: range) -> None:
    assert sorted({m.round for m in published}) == list(rounds)
    for m in published:  # re-published ones (after a kill) included
        assert replace(m, timestamp=0.0) == run.expected[m.round], f"round {m.round}"


def _metrics(log: str) -> list[dict[str, int]]:
    out = []
    for run in log.split("=== start")[1:]:
        lines = re.findall(r"metrics (\{.*\})", run)
        out.append(json.loads(lines[-1]) if lines else {})
    return out


@pytest.mark.timeout(90)
async def test_expert_load_after_every_round_whatever_the_read_order(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    run, rounds, model = Run(), [], []
    model += run.genesis()
    for r in range(12):
        events, versions = run.round(r)
        rounds += events
        model += versions
    # Round 3's close is published before its versions: the monitor must wait for them.
    cut = next(i for i, v in enumerate(model) if v.round == 3)
    await _publish(broker_env, rounds[:8], model[:cut])  # up to RoundClosed(3)
    monitor = ServiceProcess(ARGV, _env(broker_env, tmp_path), tmp_path / "load-monitor.log")
    table = broker_env.topic_table()
    async with TopicCollector(broker_env, table.name(Topic.EXPERT_LOAD)) as loads:
        try:
            await monitor.start()
            await loads.wait_until(lambda ms: len(_loads(ms)) >= 3, 40, "rounds 0-2")
            assert max(m.round for m in _loads(loads.messages)) == 2  # 3 waits for versions
            # The rest as one backlog: partitions are handed out in any order.
            await _publish(broker_env, rounds[8:], model[cut:])
            await loads.wait_until(
                lambda ms: any(m.round == 11 for m in _loads(ms)), 40, "round 11"
            )
            assert await monitor.terminate() == 0
        except BaseException:
            print(monitor.log_text()[-6000:])
            raise
        published = _loads(loads.messages)
    metrics = _metrics(monitor.log_text())[-1]
    print(
        f"\nload-monitor: 12 rounds, {len(rounds)} round events, {len(model)} part versions, "
        f"{len(published)} ExpertLoads; rounds that waited for their versions "
        f"{metrics.get('round_waits_for_versions')}, events held {metrics.get('event_held', 0)}"
    )
    assert len(published) == 12
    _check(published, run, range(12))
    assert published[-1].rounds_closed == 12
    assert metrics["round_waits_for_versions"] >= 1


@pytest.mark.timeout(120)
async def test_sigkill_and_a_restart_from_offset_zero_count_nothing_twice(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    run = Run()
    chunks: list[tuple[list[Message], list[PartVersion]]] = []
    for first, last in ((0, 10), (10, 40), (40, 50)):
        rounds: list[Message] = []
        model: list[PartVersion] = run.genesis() if first == 0 else []
        for r in range(first, last):
            events, versions = run.round(r)
            rounds += events
            model += versions
        chunks.append((rounds, model))
    env = _env(broker_env, tmp_path / "checkpoints")
    log = tmp_path / "load-monitor.log"
    monitor = ServiceProcess(ARGV, env, log)
    table = broker_env.topic_table()
    kills: list[dict[str, float]] = []
    started = time.monotonic()
    async with TopicCollector(broker_env, table.name(Topic.EXPERT_LOAD)) as loads:
        try:
            await monitor.start()
            await _publish(broker_env, *chunks[0])
            await loads.wait_until(lambda ms: len(_loads(ms)) >= 10, 40, "rounds 0-9")
            # Kill as soon as the second chunk's first ExpertLoad is out: mid-stream.
            await _publish(broker_env, *chunks[1])
            await loads.wait_until(lambda ms: len(_loads(ms)) > 10, 40, "round 10")
            await monitor.kill()
            kills.append({"rounds_published_at_kill": len(_loads(loads.messages))})
            restarted = time.monotonic()
            await monitor.start()
            await loads.wait_until(
                lambda ms: any(m.round == 39 for m in _loads(ms)), 60, "round 39"
            )
            kills[-1]["restart_to_round_39_s"] = round(time.monotonic() - restarted, 2)
            # Again, now as a new consumer group: every input comes again from offset 0.
            await monitor.kill()
            monitor = ServiceProcess(
                ARGV, {**env, "FEDMOE_LOAD_MONITOR_GROUP_ID": "load-monitor-rewound"}, log
            )
            at_second = len(_loads(loads.messages))
            await monitor.start()
            await _publish(broker_env, *chunks[2])
            await loads.wait_until(
                lambda ms: any(m.round == 49 for m in _loads(ms)), 60, "round 49"
            )
            assert await monitor.terminate() == 0
        except BaseException:
            print(monitor.log_text()[-8000:])
            raise
        published = _loads(loads.messages)
    runs = [
        {k: m.get(k, 0) for k in ("handled", "repeated", "stale", "expert_load_published")}
        for m in _metrics(monitor.log_text())
    ]
    republished = len(published) - len({m.round for m in published})
    print(
        f"\nload-monitor SIGKILL x2: 50 rounds, {len(published)} ExpertLoads "
        f"({republished} re-published after a kill), kills {kills}, "
        f"ExpertLoads from the rewound process {len(published) - at_second}, per process {runs}; "
        f"{time.monotonic() - started:.1f}s"
    )
    _check(published, run, range(50))
    assert published[-1].rounds_closed == 50
    # From offset 0 again: nothing counted twice; at most the rounds of the batch the kill cut
    # short (published, not yet checkpointed) come out again, identical.
    after = [m.round for m in published[at_second:]]
    assert [r for r in after if r >= 40] == list(range(40, 50))
    assert len(after) - 10 <= 2
    assert runs[-1]["stale"] >= 75  # the old RoundOpened / RoundClosed came again
