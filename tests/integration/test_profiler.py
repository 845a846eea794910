"""The profiler as a real `fedmoe service profiler` process on Tansu: telemetry, assignments and
acks in protocol order become the profiles `moe.profiles` folds by hand; a process SIGKILLed
twice mid-stream continues from the changelog without folding anything twice."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from brokers.settings import BrokerSettings
from moe.profiles import ClientProfile, fold_round_outcome, fold_status, fold_telemetry
from moe.wire import client_profile, expert_losses, telemetry_reading
from schemas import encode
from schemas.messages import (
    Assignment,
    DeadLetter,
    DeviceStatus,
    Message,
    PartClosed,
    ProfileSnapshot,
    Telemetry,
    UpdateAck,
)
from schemas.topics import Topic
from tests.integration.programs.harness import (
    ServiceProcess,
    TopicCollector,
    broker_environ,
    produce,
)

E = 4
ARGV = ["-m", "fedmoe.cli", "service", "profiler"]


def dev(i: int) -> str:
    return f"dev-{i:05d}"


def telemetry(
    i: int, round_: int, losses: dict[int, float] | None = None, ms: float | None = None
) -> Telemetry:
    return Telemetry(
        message_id=f"t-{i}-{round_}",
        device_id=dev(i),
        round=round_,
        timestamp=1000.0 + round_,
        device_type=i % 3,
        compute_ms_per_sample=ms if ms is not None else 1.0 + (i % 7) * 0.5 + round_ * 0.1,
        bandwidth_kbps=400.0 + 10.0 * ((i * round_) % 9),
        memory_mb=1024.0 + 512.0 * (i % 5),
        battery=0.5,
        num_samples=30 + i % 11,
        routing_histogram=tuple(float((i + e) % 4) for e in range(E)),
        expert_loss={f"expert-{e}": v for e, v in (losses or {}).items()},
    )


def assignment(i: int, round_: int, experts: tuple[int, ...]) -> Assignment:
    return Assignment(
        message_id=f"a-{i}-{round_}",
        device_id=dev(i),
        round=round_,
        timestamp=1.0,
        experts=experts,
        deadline=1e9,
        model_versions={},
    )


def ack(i: int, round_: int, part: str, status: str) -> UpdateAck:
    return UpdateAck(
        message_id=f"k-{i}-{round_}-{part}",
        device_id=dev(i),
        round=round_,
        timestamp=1.0,
        update_id=f"u-{i}-{round_}",
        part=part,
        status=status,
    )


def keyed(messages: Sequence[Message]) -> list[tuple[bytes | None, bytes]]:
    return [(m.device_id.encode(), encode(m)) for m in messages]


def latest(messages: list[Message]) -> dict[str, ProfileSnapshot]:
    """Each device's last snapshot (a device's snapshots are all in one partition, in order)."""
    out: dict[str, ProfileSnapshot] = {}
    for m in messages:
        if isinstance(m, ProfileSnapshot):
            out[m.device_id] = m
    return out


def without_time(profile: ClientProfile) -> ClientProfile:
    return replace(profile, last_seen=0.0)


def _env(broker: BrokerSettings) -> dict[str, str]:
    return broker_environ(
        broker,
        FEDMOE_RUNTIME_MAX_BATCH="10",  # many commits: a kill lands between some of them
        FEDMOE_RUNTIME_POLL_TIMEOUT_S="0.2",
        FEDMOE_RUNTIME_SESSION_TIMEOUT_S="6",
        FEDMOE_RUNTIME_METRICS_INTERVAL_S="2",
    )


@pytest.mark.timeout(90)
async def test_profiles_fold_telemetry_status_and_round_outcomes(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    table = broker_env.topic_table()
    tel, asg, acks = (table.name(t) for t in (Topic.TELEMETRY, Topic.ASSIGNMENTS, Topic.ACKS))
    t1 = [telemetry(i, 1) for i in range(3)]
    t2 = [
        telemetry(0, 2, {0: 0.5, 2: 0.9}),
        telemetry(1, 2, {1: 0.3}),
        telemetry(2, 2),
    ]
    stray = DeviceStatus(message_id="s9", device_id=dev(9), round=1, timestamp=1.0, online=True)
    wrong = PartClosed(
        message_id="pc", device_id=dev(0), round=1, timestamp=1.0, part="shared", version=1,
        applied=1, reason="quorum",
    )  # fmt: skip
    offline = DeviceStatus(message_id="s2", device_id=dev(2), round=2, timestamp=1.0, online=False)
    profiler = ServiceProcess(ARGV, _env(broker_env), tmp_path / "profiler.log")
    async with (
        TopicCollector(broker_env, table.name(Topic.PROFILES)) as profiles,
        TopicCollector(broker_env, table.name(Topic.DEAD_LETTER)) as dead,
    ):
        try:
            await profiler.start()

            async def phase(
                topic: str,
                messages: Sequence[Message],
                done: Callable[[dict[str, ProfileSnapshot]], bool],
                what: str,
            ) -> None:
                await produce(broker_env, topic, keyed(messages))
                await profiles.wait_until(lambda ms: done(latest(ms)), 40, what)

            await phase(tel, [*t1, stray, wrong], lambda s: len(s) == 3, "round-1 profiles")
            await phase(
                asg,
                [assignment(0, 1, (0, 2)), assignment(1, 1, (1,))],
                lambda s: s[dev(0)].pending_round == 1 and s[dev(1)].pending_round == 1,
                "round 1 pending",
            )
            verdicts = [ack(0, 1, p, "applied") for p in ("shared", "expert-0", "expert-2")]
            verdicts += [ack(1, 1, p, "late") for p in ("shared", "expert-1")]
            await phase(
                acks,
                verdicts,
                lambda s: (
                    s[dev(0)].pending_outcome == "applied" and s[dev(1)].pending_outcome == "missed"
                ),
                "verdicts",
            )
            await phase(
                tel,
                [*t2, offline],
                lambda s: all(p.telemetry_round == 2 for p in s.values()) and not s[dev(2)].online,
                "round-2 profiles",
            )
            await dead.wait_until(lambda ms: len(ms) >= 1, 20, "the dead letter")
            assert await profiler.terminate() == 0
        except BaseException:
            print(profiler.log_text()[-6000:])
            raise
        snapshots = latest(profiles.messages)
        letters = [m for m in dead.messages if isinstance(m, DeadLetter)]

    assert set(snapshots) == {dev(0), dev(1), dev(2)}  # the stray status made no profile
    assert len(letters) == 1
    assert letters[0].source == tel
    assert "unexpected_message" in letters[0].reason
    expected = {
        dev(0): fold_round_outcome(
            fold_telemetry(None, telemetry_reading(t1[0]), now=0.0),
            round=1,
            assigned=True,
            completed_in_time=True,
            expert_losses=expert_losses(t2[0]),
        ),
        dev(1): fold_round_outcome(
            fold_telemetry(None, telemetry_reading(t1[1]), now=0.0),
            round=1,
            assigned=True,
            completed_in_time=False,
            expert_losses=expert_losses(t2[1]),
        ),
        dev(2): fold_telemetry(None, telemetry_reading(t1[2]), now=0.0),
    }
    for i, t in enumerate(t2):
        expected[dev(i)] = fold_telemetry(expected[dev(i)], telemetry_reading(t), now=0.0)
    expected[dev(2)] = fold_status(expected[dev(2)], online=False, now=0.0)
    for device, snapshot in snapshots.items():
        assert without_time(client_profile(snapshot)) == without_time(expected[device])
        assert (snapshot.round, snapshot.pending_round, snapshot.telemetry_round) == (2, -1, 2)
    s0, s1 = snapshots[dev(0)], snapshots[dev(1)]
    assert (s0.rounds_assigned, s0.rounds_completed, s0.completion_rate) == (1, 1, 1.0)
    assert (s1.rounds_assigned, s1.rounds_completed) == (1, 0)
    assert s1.completion_rate == pytest.approx(0.7)
    assert set(s0.expert_quality) == {"expert-0", "expert-2"}
    assert s0.expert_trials == {"expert-0": 1, "expert-2": 1}
    assert s1.last_round == 1
    assert snapshots[dev(2)].rounds_assigned == 0


# -- the SIGKILL test ------------------------------------------------------------------------

DEVICES = 100
ROUNDS = 4
STATUSES = 20  # per device in round 2's telemetry phase


def is_assigned(i: int, r: int) -> bool:
    return (i + r) % 3 != 0


def experts_of(i: int, r: int) -> tuple[int, ...]:
    return tuple(sorted({i % E, (i + r) % E}))


def verdicts_of(i: int, r: int) -> list[tuple[str, str]]:
    """The acks of a device's round: none (it dropped out), all late, or all applied."""
    if i % 5 == 0:
        return []
    status = "late" if i % 4 == 1 else "applied"
    return [("shared", status), *((f"expert-{e}", status) for e in experts_of(i, r))]


class Script:
    """A fleet's rounds: what each device reports (the losses of its last training, once: in
    its first telemetry after it) and hears."""

    def __init__(self) -> None:
        self.telemetry: dict[int, list[Telemetry]] = {}  # round → one per device
        unreported: dict[int, dict[int, float]] = {}
        for r in range(1, ROUNDS + 2):
            self.telemetry[r] = [telemetry(i, r, unreported.pop(i, None)) for i in range(DEVICES)]
            for i in range(DEVICES):
                if is_assigned(i, r) and verdicts_of(i, r):  # it trained
                    unreported[i] = {e: 0.1 + 0.05 * ((i + r + e) % 10) for e in experts_of(i, r)}

    def statuses(self, r: int, per_device: int) -> list[DeviceStatus]:
        """Online reports (each moves last_seen, so each is a change and a snapshot)."""
        return [
            DeviceStatus(
                message_id=f"s-{i}-{r}-{k}", device_id=dev(i), round=r, timestamp=1.0, online=True
            )
            for k in range(per_device)
            for i in range(DEVICES)
        ]

    def assignments(self, r: int) -> list[Assignment]:
        return [assignment(i, r, experts_of(i, r)) for i in range(DEVICES) if is_assigned(i, r)]

    def acks(self, r: int) -> list[UpdateAck]:
        return [
            ack(i, r, part, status)
            for i in range(DEVICES)
            if is_assigned(i, r)
            for part, status in verdicts_of(i, r)
        ]

    def reference(self, i: int) -> ClientProfile:
        """Device i's profile after every round, by `moe.profiles` (the protocol's folds)."""
        p = fold_telemetry(None, telemetry_reading(self.telemetry[1][i]), now=0.0)
        for r in range(1, ROUNDS + 1):
            nxt = self.telemetry[r + 1][i]
            if is_assigned(i, r):
                verdicts = verdicts_of(i, r)
                p = fold_round_outcome(
                    p,
                    round=r,
                    assigned=True,
                    completed_in_time=bool(verdicts) and verdicts[0][1] == "applied",
                    expert_losses=expert_losses(nxt),  # none when it did not train
                )
            p = fold_telemetry(p, telemetry_reading(nxt), now=0.0)
        return p


def _metrics(log: str) -> list[dict[str, int]]:
    """The last metrics line of each process the log holds (killed ones: their last periodic)."""
    out = []
    for run in log.split("=== start")[1:]:
        lines = re.findall(r"metrics (\{.*\})", run)
        out.append(json.loads(lines[-1]) if lines else {})
    return out


@pytest.mark.timeout(120)
async def test_sigkill_and_restart_continue_from_the_changelog(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    table = broker_env.topic_table()
    tel, asg, acks = (table.name(t) for t in (Topic.TELEMETRY, Topic.ASSIGNMENTS, Topic.ACKS))
    script = Script()
    env = _env(broker_env)
    profiler = ServiceProcess(ARGV, env, tmp_path / "profiler.log")
    kills: list[dict[str, float]] = []
    inputs = 0
    started = time.monotonic()
    async with TopicCollector(broker_env, table.name(Topic.PROFILES)) as profiles:

        async def phase(
            topic: str,
            messages: Sequence[Message],
            done: Callable[[ProfileSnapshot], bool],
            devices: set[str],
            *,
            kill: bool = False,
            rewind: bool = False,
        ) -> None:
            nonlocal inputs, profiler
            inputs += len(messages)
            before = len(profiles.messages)
            await produce(broker_env, topic, keyed(messages))

            def finished(share: float) -> Callable[[list[Message]], bool]:
                def check(ms: list[Message]) -> bool:
                    snaps = latest(ms)
                    n = sum(1 for d in devices if d in snaps and done(snaps[d]))
                    return n >= share * len(devices)

                return check

            if kill:
                # Kill as soon as the phase's first snapshot is out: the process is mid-stream.
                await profiles.wait_until(lambda ms: len(ms) > before, 40, "the phase's start")
                await profiler.kill()
                at_kill = len(profiles.messages) - before
                if rewind:
                    # The worst redelivery: a group without commits, so every input comes
                    # again from offset 0; all of it is in the changelog already.
                    profiler = ServiceProcess(
                        ARGV,
                        {**env, "FEDMOE_PROFILER_GROUP_ID": "profiler-rewound"},
                        profiler.log_path,
                    )
                restarted = time.monotonic()
                await profiler.start()
                await profiles.wait_until(finished(1.0), 60, "the phase after the restart")
                kills.append(
                    {
                        "phase_records": len(messages),
                        "phase_snapshots_seen_at_kill": at_kill,
                        "restart_to_phase_done_s": round(time.monotonic() - restarted, 2),
                    }
                )
            else:
                await profiles.wait_until(finished(1.0), 40, f"phase on {topic}")

        everyone = {dev(i) for i in range(DEVICES)}
        try:
            await profiler.start()
            for r in range(1, ROUNDS + 1):
                reports: list[Message] = list(script.telemetry[r])
                if r == 2:  # a long phase, so the kill lands mid-stream: each status a change
                    reports += script.statuses(r, STATUSES)
                await phase(
                    tel, reports, lambda s, r=r: s.telemetry_round == r, everyone, kill=r == 2
                )
                assigned = {dev(i) for i in range(DEVICES) if is_assigned(i, r)}
                await phase(
                    asg, script.assignments(r), lambda s, r=r: s.pending_round == r, assigned
                )
                judged = {m.device_id for m in script.acks(r)}
                await phase(
                    acks, script.acks(r), lambda s: s.pending_outcome != "", judged,
                    kill=r == 3, rewind=True,
                )  # fmt: skip
            last = ROUNDS + 1
            await phase(tel, script.telemetry[last], lambda s: s.telemetry_round == last, everyone)
            assert await profiler.terminate() == 0
        except BaseException:
            print(profiler.log_text()[-8000:])
            raise
        snapshots = latest(profiles.messages)
        ids = [m.message_id for m in profiles.messages]
    runs = [
        {k: m.get(k, 0) for k in ("handled", "redelivered", "outcome_folded", "changelog_reads")}
        for m in _metrics(profiler.log_text())
    ]
    duplicates = len(ids) - len(set(ids))
    print(
        f"\nprofiler SIGKILL x2: {DEVICES} devices, {ROUNDS} rounds, {inputs} input records, "
        f"{len(ids)} snapshots ({duplicates} re-produced after a kill), kills {kills}, "
        f"per process {runs}; {time.monotonic() - started:.1f}s"
    )
    assert len(kills) == 2
    assert set(snapshots) == everyone
    for i in range(DEVICES):
        snapshot = snapshots[dev(i)]
        want = script.reference(i)
        assert without_time(client_profile(snapshot)) == without_time(want), dev(i)
        assert snapshot.rounds_assigned == sum(is_assigned(i, r) for r in range(1, ROUNDS + 1))
        assert (snapshot.pending_round, snapshot.round) == (-1, ROUNDS + 1)
