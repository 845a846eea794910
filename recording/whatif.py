"""Offline what-if (`fedmoe replay FILE --offline`): the same fleet, another matcher.

For every strategy, independently, the recording's device telemetry is folded round by round
through the services' own pure pieces:

    for each recorded round k (in order):
        fold k's telemetry and status        services.profiler.state.step (as the profiler)
        plan k                               services.matcher.planning.RoundPlanner (as the
                                             matcher: candidates, MatchingInput, strategy)
        predict each assigned device's time  moe.fleet.round_seconds at what the device
                                             measured in round k (its telemetry of round
                                             k + 1 reports it; else its round-k report)
        fold the outcome                     an Assignment and an UpdateAck ("applied", or
                                             "late" when the predicted time > the deadline)
                                             through `step`, as the profiler folds the real ones
        fold the load                        moe.load: on_assignment, on_part_closed per expert
                                             with the in-time devices (samples = their samples
                                             routed to it), on_round_closed

and compared with what the recorded run assigned (recorded Assignment messages). What it
cannot know: the recorded telemetry's routing histograms and losses are those of the recorded
run's model, not of the model another matcher would have trained, so the what-if is about
matching and timing on the same fleet, not about accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe.fleet import round_seconds
from moe.load import ExpertLoadState, imbalance, on_assignment, on_part_closed, on_round_closed
from moe.matching import make_strategy
from moe.parts import expert_part_id
from recording.follow import RecordedRound, played_rounds, recorded_rounds
from recording.format import Record
from recording.replayer import recorded_assignments
from schemas import decode
from schemas.errors import SchemaError
from schemas.messages import Assignment, DeviceStatus, Telemetry, UpdateAck
from services.matcher.planning import MatchingContext, RoundPlan, RoundPlanner
from services.profiler.state import DeviceState, step, to_snapshot


@dataclass
class StrategyRun:
    """One strategy's fold: per-round figures."""

    name: str
    rounds: list[int] = field(default_factory=list)
    load_cv: list[float] = field(default_factory=list)
    assigned: list[int] = field(default_factory=list)
    pairs: list[int] = field(default_factory=list)
    predicted_late: list[int] = field(default_factory=list)
    agreement: list[float | None] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The figures of `summary.json`."""
        agree = [a for a in self.agreement if a is not None]
        return {
            "rounds": len(self.rounds),
            "load_cv_mean": round(float(np.mean(self.load_cv)), 4) if self.load_cv else None,
            "assigned_per_round": round(float(np.mean(self.assigned)), 3)
            if self.assigned
            else None,
            "pairs_per_round": round(float(np.mean(self.pairs)), 3) if self.pairs else None,
            "predicted_late": int(sum(self.predicted_late)),
            "predicted_late_share": round(sum(self.predicted_late) / sum(self.assigned), 4)
            if sum(self.assigned)
            else None,
            "agreement_with_recorded": round(float(np.mean(agree)), 4) if agree else None,
            "per_round": {
                "round": self.rounds,
                "load_cv": [round(x, 4) for x in self.load_cv],
                "assigned": self.assigned,
                "predicted_late": self.predicted_late,
                "agreement": self.agreement,
            },
        }


def _decoded(records: Iterable[Record]) -> list[tuple[Record, Telemetry | DeviceStatus]]:
    out: list[tuple[Record, Telemetry | DeviceStatus]] = []
    for r in records:
        try:
            m = decode(r.payload)
        except SchemaError:
            continue
        if isinstance(m, Telemetry | DeviceStatus):
            out.append((r, m))
    return out


def measured_times(
    rounds: Sequence[RecordedRound],
) -> dict[tuple[str, int], tuple[float, float]]:
    """(device, round k) → (ms/sample, kbit/s) the device measured in k: its telemetry of the
    next round reports them (`docs/round-protocol.md` step 5); failing that, its own of k."""
    own: dict[tuple[str, int], tuple[float, float]] = {}
    later: dict[tuple[str, int], tuple[float, float]] = {}
    for rr in rounds:
        for _, m in _decoded(rr.announcements):
            if isinstance(m, Telemetry):
                values = (m.compute_ms_per_sample, m.bandwidth_kbps)
                own[(m.device_id, m.round)] = values
                later[(m.device_id, m.round - 1)] = values
    return {**own, **later}


def agreement(plan: RoundPlan, recorded: Mapping[str, tuple[int, ...]] | None) -> float | None:
    """Share of the recorded (device, expert) pairs the plan reproduces."""
    if not recorded:
        return None
    want = {(d, e) for d, es in recorded.items() for e in es}
    got = {(d, e) for d, es in plan.experts.items() for e in es}
    return len(want & got) / len(want) if want else None


def fold_strategy(
    name: str,
    rounds: Sequence[RecordedRound],
    context: MatchingContext,
    *,
    recorded: Mapping[int, Mapping[str, tuple[int, ...]]],
    times: Mapping[tuple[str, int], tuple[float, float]],
    part_bytes: tuple[float, float],
) -> StrategyRun:
    """One strategy over the recorded rounds (see the module docstring)."""
    planner = RoundPlanner(context, make_strategy(name))
    states: dict[str, DeviceState] = {}
    load = on_round_closed(ExpertLoadState.empty(context.num_experts))  # genesis (round 0)
    run = StrategyRun(name)
    offset = 0
    shared_bytes, expert_bytes = part_bytes
    for rr in rounds:
        for rec, m in _decoded(rr.announcements):
            offset += 1
            result = step(
                states.get(m.device_id), m, source="telemetry/0", offset=offset, now=rec.t_ns / 1e9
            )
            if result.state is not None:
                states[m.device_id] = result.state
        snapshots = [
            to_snapshot(s, message_id=f"whatif-{d}", timestamp=0.0) for d, s in states.items()
        ]
        plan = planner(rr.round, snapshots, load)
        load = on_assignment(load, plan.assignment)
        late = 0
        in_time: dict[int, list[float]] = {}
        for device, experts in plan.experts.items():
            state = states[device]
            ms, kbps = times.get(
                (device, rr.round),
                (state.profile.compute_ms_per_sample, state.profile.bandwidth_kbps),
            )
            seconds = float(
                round_seconds(
                    ms,
                    kbps,
                    state.profile.num_samples,
                    context.epochs,
                    len(experts),
                    shared_bytes + len(experts) * expert_bytes,
                )
            )
            on_time = seconds <= context.deadline_s
            late += not on_time
            offset += 1
            assigned = Assignment(
                message_id=f"whatif-a-{offset}",
                device_id=device,
                round=rr.round,
                timestamp=0.0,
                experts=experts,
                deadline=0.0,
                model_versions={},
            )
            states[device] = (
                step(state, assigned, source="assignments/0", offset=offset, now=0.0).state or state
            )
            offset += 1
            ack = UpdateAck(
                message_id=f"whatif-k-{offset}",
                device_id=device,
                round=rr.round,
                timestamp=0.0,
                update_id=f"whatif-u-{offset}",
                part=expert_part_id(experts[0]),
                status="applied" if on_time else "late",
            )
            states[device] = (
                step(states[device], ack, source="acks/0", offset=offset, now=0.0).state
                or states[device]
            )
            if on_time:
                share = state.profile.affinity(context.num_experts)
                for e in experts:
                    in_time.setdefault(e, []).append(state.profile.num_samples * share[e])
        for e, samples in sorted(in_time.items()):
            load = on_part_closed(load, e, len(samples), float(sum(samples)))
        load = on_round_closed(load)
        counts = plan.assignment.sum(axis=0) if plan.candidates else np.zeros(context.num_experts)
        run.rounds.append(rr.round)
        run.load_cv.append(imbalance(counts)[0])
        run.assigned.append(plan.devices)
        run.pairs.append(int(counts.sum()))
        run.predicted_late.append(late)
        run.agreement.append(agreement(plan, recorded.get(rr.round)))
    return run


def what_if(
    records: Sequence[Record],
    context: MatchingContext,
    strategies: Sequence[str],
    part_bytes: tuple[float, float],
) -> dict[str, StrategyRun]:
    """Every strategy over the recording's rounds."""
    rounds = played_rounds(records, recorded_rounds(records))
    recorded = recorded_assignments(records)
    times = measured_times(rounds)
    return {
        name: fold_strategy(
            name, rounds, context, recorded=recorded, times=times, part_bytes=part_bytes
        )
        for name in strategies
    }


def write_summary(
    runs: Mapping[str, StrategyRun], out: Path, *, source: str, info: Mapping[str, Any]
) -> dict[str, Any]:
    """`out/summary.json` and `out/whatif.png`; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "recording": source,
        "recorded": dict(info),
        "strategies": {name: run.summary() for name, run in runs.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plot(runs, out / "whatif.png")
    return summary


def plot(runs: Mapping[str, StrategyRun], path: Path) -> None:
    """Load CV and predicted-late devices per round, one line per strategy."""
    from matplotlib.figure import Figure  # the OO API: no pyplot state, no display

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    for name, run in runs.items():
        left.plot(run.rounds, run.load_cv, label=name)
        right.plot(run.rounds, run.predicted_late, label=name)
    left.set_xlabel("recorded round")
    left.set_ylabel("expert-load CV of the assignment")
    right.set_xlabel("recorded round")
    right.set_ylabel("assigned devices predicted late")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle("what-if: the recorded fleet under each matching strategy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
