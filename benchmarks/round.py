"""The bus's own overhead per round, at a given fleet size.

    python -m benchmarks.round [--devices 100,1000] [--rounds 12] [--time-scale 2]
    FEDMOE_MATCHER_OPEN_ON_RECENT=1 python -m benchmarks.round ...   (the matcher's early open)

For each fleet size it runs a deployment (embedded brokers, every service as its own process,
`fedmoe.demo.deployment`) and `fedmoe fleet` with static devices (no jitter, no stragglers, so
a device's round time is exactly what the scenario says), reads `rounds`, `assignments` and
`acks` as they are produced, and per round r (the first `--warmup` rounds left out) splits the
wall time between two openings:

    period(r)    = RoundOpened(r + 1) − RoundOpened(r)
    own(r)       = max over the devices with an update applied in r of their simulated round
                   time × time scale (download, compute, upload: the scenario's round time,
                   which a simulated device waits out from the round's open time)
    overhead(r)  = period(r) − own(r)                       the bus's part of the round
    close_lag(r) = RoundClosed(r) − RoundOpened(r) − own(r) last upload → gateway → Kafka →
                                                            aggregator → PartClosed → matcher
    open_gap(r)  = RoundOpened(r + 1) − RoundClosed(r)      RoundClosed → devices → telemetry →
                                                            profiler; load monitor → matcher
    and the open gap in turn (Kafka record times):
    announce(r)  = last Telemetry for r + 1 on Kafka − RoundClosed(r)   devices hear the close,
                                                            report; the gateway produces
    profile(r)   = the last device's first ProfileSnapshot of r + 1 − that telemetry
                                                            the profiler folds
    decide(r)    = RoundOpened(r + 1) − the later of that snapshot and the ExpertLoad after r
                                                            the matcher's open rule and plan

A round that closed by its deadline (some assigned update late or lost) is counted apart
(`deadline_rounds`) and left out of the figures: its length is the deadline, not the bus; so
is a round in which no update was applied (`empty_rounds`: no device reported in time, e.g. a
fleet larger than this host can run), whose length is the matcher's maximum wait.
Every process shares this machine's cores with the simulated fleet, whose devices train for
real (torch) on the same cores: the figures include that contention.

One JSON line per (devices, figure): `{"benchmark": "round", "figure", "unit", "value",
"ceiling": null, "ratio": null, "goal", ...params}`: `overhead_median_s`, `overhead_p90_s`,
`close_lag_median_s`, `open_gap_median_s`, `announce_median_s`, `profile_median_s`,
`decide_median_s`, with `rounds` measured, `deadline_rounds` and `empty_rounds`; and how
many devices a measured round had (unit `devices`, medians): `reporting_devices_median`
(announced it), `reported_before_open_devices_median` (their telemetry on Kafka before it
opened: what the matcher could take), `assigned_devices_median`, `applied_devices_median`.

Beside them, what each process spent in CPU over the rounds after the warmup (`benchmarks.cpu`,
from /proc), per round: one `cpu_s_per_round` line per `role` (each service, `mosquitto`,
`kafka`, `fleet`), `bus_cpu_s_per_round` (every role but the fleet's), `fleet_cpu_s_per_round`
and `wall_s_per_round`. On a host whose cores the simulated devices share, the bus's CPU per
round over the cores bounds from below what its overhead would be with the devices elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cpu import ProcessCpu, cpu_by_role, host, snapshot
from brokers.settings import BrokerSettings
from clients.world import FleetWorld
from fedmoe.demo.deployment import deployment
from fedmoe.demo.processes import fedmoe_argv
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import load_settings
from moe.scenario import build_scenario, device_id
from schemas.messages import (
    Assignment,
    ExpertLoad,
    ProfileSnapshot,
    RoundClosed,
    RoundOpened,
    Telemetry,
    UpdateAck,
)
from schemas.topics import Topic
from services.handler import InboundRecord, Outbound
from services.matcher.settings import MatcherSettings
from services.runtime import RuntimeSettings, ServiceRuntime

GOALS_S = {100: None, 1000: 0.1, 10000: 1.0}  # the goals for the overhead per round


@dataclass
class RoundLog:
    """Handler: what the rounds, assignments and acks topics said, per round."""

    opened: dict[int, float] = field(default_factory=dict)
    closed: dict[int, RoundClosed] = field(default_factory=dict)
    experts: dict[int, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    applied: dict[int, set[str]] = field(default_factory=dict)
    # Kafka record times (s): each device's telemetry of each announced round, each device's
    # first profile that folded it (later ones carry the round's outcome), the first
    # ExpertLoad after each close.
    reported: dict[int, dict[str, float]] = field(default_factory=dict)
    profiles: dict[int, dict[str, float]] = field(default_factory=dict)
    loads: dict[int, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, record: InboundRecord) -> Sequence[Outbound]:
        m = record.message
        if isinstance(m, RoundOpened):
            self.opened.setdefault(m.round, m.timestamp)
        elif isinstance(m, RoundClosed):
            self.closed.setdefault(m.round, m)
        elif isinstance(m, Assignment):
            self.experts.setdefault(m.round, {})[m.device_id] = tuple(m.experts)
        elif isinstance(m, UpdateAck) and m.status == "applied":
            self.applied.setdefault(m.round, set()).add(m.device_id)
        at = record.timestamp_ms / 1000
        if isinstance(m, Telemetry):
            self.reported.setdefault(m.round, {}).setdefault(m.device_id, at)
        elif isinstance(m, ProfileSnapshot) and m.telemetry_round >= 0:
            self.profiles.setdefault(m.telemetry_round, {}).setdefault(m.device_id, at)
        elif isinstance(m, ExpertLoad):
            self.loads.setdefault(m.round, at)
        self.changed.set()
        return ()


def _watch(broker: BrokerSettings, log: RoundLog) -> ServiceRuntime:
    return ServiceRuntime(
        broker,
        name="round-benchmark",
        handler=log,
        inputs=[
            Topic.ROUNDS,
            Topic.ASSIGNMENTS,
            Topic.ACKS,
            Topic.TELEMETRY,
            Topic.PROFILES,
            Topic.EXPERT_LOAD,
        ],
        group_id=f"round-benchmark-{uuid.uuid4().hex[:8]}",
        settings=RuntimeSettings(
            auto_offset_reset="earliest", poll_timeout_s=0.1, metrics_interval_s=3600.0
        ),
    )


def round_figures(
    log: RoundLog, world: FleetWorld, ids: dict[str, int], warmup: int
) -> dict[str, Any]:
    """Per-round overheads (see the module docstring) reduced to medians and a p90."""
    overhead: list[float] = []
    close_lag: list[float] = []
    open_gap: list[float] = []
    steps: dict[str, list[float]] = {"announce": [], "profile": [], "decide": []}
    # Per round: devices that announced it, those of them on Kafka before it opened (what the
    # matcher could take), assigned, with an update applied.
    counts: dict[str, list[float]] = {
        "reporting": [],
        "reported_before_open": [],
        "assigned": [],
        "applied": [],
    }
    deadline_rounds = 0
    empty_rounds = 0
    for r in sorted(log.opened):
        if r <= warmup or r + 1 not in log.opened or r not in log.closed:
            continue
        if log.closed[r].reason == "deadline":
            deadline_rounds += 1
            continue
        applied = log.applied.get(r, set())
        if not applied:
            # No device's work in it (none reported in time, or the fleet is still
            # connecting): its length is the matcher's max wait, not the bus.
            empty_rounds += 1
            continue
        assigned = log.experts.get(r, {})
        own = max(
            (world.round_wall_s(ids[d], assigned[d], r) for d in applied if d in assigned),
            default=0.0,
        )
        opened, closed, following = log.opened[r], log.closed[r].timestamp, log.opened[r + 1]
        reports = log.reported.get(r, {})
        counts["reporting"].append(len(reports))
        counts["reported_before_open"].append(sum(1 for t in reports.values() if t <= opened))
        counts["assigned"].append(len(assigned))
        counts["applied"].append(len(applied))
        overhead.append(following - opened - own)
        close_lag.append(closed - opened - own)
        open_gap.append(following - closed)
        told, first = log.reported.get(r + 1), log.profiles.get(r + 1)
        if told and first:
            told_at, folded = max(told.values()), max(first.values())
            steps["announce"].append(told_at - closed)
            steps["profile"].append(folded - told_at)
            steps["decide"].append(following - max(folded, log.loads.get(r, 0.0)))
    return {
        "rounds": len(overhead),
        "deadline_rounds": deadline_rounds,
        "empty_rounds": empty_rounds,
        "overhead_median_s": _median(overhead),
        "overhead_p90_s": _quantile(overhead, 0.9),
        "close_lag_median_s": _median(close_lag),
        "open_gap_median_s": _median(open_gap),
        **{f"{step}_median_s": _median(values) for step, values in steps.items()},
        **{f"{what}_devices_median": _median(values) for what, values in counts.items()},
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 4)


async def measure(
    devices: int, rounds: int, time_scale: float, fleet_processes: int, warmup: int, out: Path
) -> dict[str, Any]:
    """One deployment of `devices` for `rounds` rounds; the figures of `round_figures`."""
    scenario = ScenarioSettings(devices=devices, static_devices=True, time_scale=time_scale)
    world = FleetWorld(build_scenario(scenario.config()), time_scale=time_scale)
    ids = {device_id(i): i for i in range(devices)}
    log = RoundLog()
    timeout_s = 120.0 + rounds * (world.deadline_wall_s + 30.0)
    async with (
        deployment(out, scenario, os.environ, rounds=rounds) as dep,
        _watch(dep.broker, log),
    ):
        fleet_env = {**dep.env, "FEDMOE_FLEET_PROCESSES": str(fleet_processes)}
        await dep.group.start("fleet", fedmoe_argv("fleet"), fleet_env)
        before: dict[int, ProcessCpu] | None = None
        started = 0.0
        async with asyncio.timeout(timeout_s):
            while rounds not in log.closed:
                log.changed.clear()
                await log.changed.wait()
                if before is None and warmup + 1 in log.opened:
                    before, started = snapshot(), time.monotonic()
        if before is None:
            raise RuntimeError(f"round {warmup + 1} never opened")
        spent = cpu_by_role(before, snapshot(), os.getpid())
        window = rounds - warmup
        wall_s = (time.monotonic() - started) / window
        await dep.group.stop("fleet", timeout_s=30.0)
    return {**round_figures(log, world, ids, warmup), **cpu_figures(spent, window, wall_s)}


def cpu_figures(spent: dict[str, float], rounds: int, wall_s: float) -> dict[str, Any]:
    """CPU seconds per round of every role (`benchmarks.cpu`), of the bus (every role but the
    simulated fleet and the benchmark's own helpers) and of the fleet, beside the wall time
    per round: what the bus itself would cost if the devices ran elsewhere."""
    per_round = {role: s / rounds for role, s in spent.items()}
    bus = sum(s for role, s in per_round.items() if role not in ("fleet", "other"))
    return {
        "cpu": {role: round(s, 3) for role, s in sorted(per_round.items())},
        "bus_cpu_s_per_round": round(bus, 3),
        "fleet_cpu_s_per_round": round(per_round.get("fleet", 0.0), 3),
        "wall_s_per_round": round(wall_s, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.round", description=__doc__)
    parser.add_argument("--devices", default="100,1000", help="comma-separated fleet sizes")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per fleet size")
    parser.add_argument("--warmup", type=int, default=2, help="first rounds left out")
    parser.add_argument("--time-scale", type=float, default=2.0, help="wall s per simulated s")
    parser.add_argument(
        "--devices-per-process", type=int, default=500, help="fleet processes: one per this many"
    )
    args = parser.parse_args(argv)
    for n in (int(x) for x in args.devices.split(",")):
        processes = max(1, math.ceil(n / args.devices_per_process))
        with tempfile.TemporaryDirectory(prefix="fedmoe-round-") as tmp:
            figures = asyncio.run(
                measure(n, args.rounds, args.time_scale, processes, args.warmup, Path(tmp))
            )
        params = {
            "devices": n,
            "open_on_recent": load_settings(MatcherSettings, os.environ).open_on_recent,
            "fleet_processes": processes,
            "time_scale": args.time_scale,
            "rounds": figures.pop("rounds"),
            "deadline_rounds": figures.pop("deadline_rounds"),
            "empty_rounds": figures.pop("empty_rounds"),
            **host(),
        }
        per_role = [("cpu_s_per_round", v, {"role": r}) for r, v in figures.pop("cpu").items()]
        for figure, value, extra in [*per_role, *((f, v, {}) for f, v in figures.items())]:
            line = {
                "benchmark": "round",
                "figure": figure,
                "unit": "devices" if figure.endswith("devices_median") else "s",
                "value": value,
                "ceiling": None,
                "ratio": None,
                "goal": GOALS_S.get(n) if figure.startswith("overhead") else None,
                **extra,
                **params,
            }
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
