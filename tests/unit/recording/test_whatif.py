"""The offline what-if on a small recording: the services' folds, predicted lateness, agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recording.follow import recorded_rounds
from recording.format import Record
from recording.whatif import measured_times, what_if, write_summary
from services.matcher.planning import MatchingContext
from tests.unit.recording.helpers import assignment, mqtt, status, telemetry

CONTEXT = MatchingContext(
    num_experts=4,
    deadline_s=1.5,
    shared_bytes=19240.0,
    expert_bytes=33540.0,
    epochs=2,
    rng=lambda r: np.random.default_rng(r),
)
SIZES = (19240.0, 33540.0)


def _fleet(
    rounds: int, slow: dict[tuple[int, int], float], assigned: dict[int, dict[str, tuple[int, ...]]]
) -> list[Record]:
    """4 devices; `slow[(device, round)]` is the kbit/s its telemetry of that round reports."""
    out: list[Record] = []
    t = 0
    for r in range(1, rounds + 1):
        for d in range(4):
            dev = f"dev-{d:05d}"
            out.append(mqtt(t, "status", status(dev, r, True)))
            out.append(
                mqtt(t + 1, "telemetry", telemetry(dev, r, ms=2.0, kbps=slow.get((d, r), 8000.0)))
            )
            t += 10
        for dev, experts in assigned.get(r, {}).items():
            out.append(mqtt(t, "assignment", assignment(dev, r, experts)))
            t += 1
        t += 1000
    return out


def test_measured_times_come_from_the_next_rounds_report() -> None:
    records = _fleet(3, {(1, 2): 300.0}, {})
    times = measured_times(recorded_rounds(records))
    assert times[("dev-00001", 1)] == (2.0, 300.0)  # reported in round 2, measured in 1
    assert times[("dev-00001", 2)] == (2.0, 8000.0)
    assert times[("dev-00001", 3)] == (2.0, 8000.0)  # the last round: its own report


def test_every_strategy_folds_every_round_and_late_devices_are_predicted() -> None:
    # dev-00001's link collapses in round 1 (its round-2 telemetry says 300 kbit/s): any
    # strategy that assigns it in round 1 must count it late, none in rounds 2 and 3.
    records = _fleet(3, {(1, 2): 300.0}, {})
    runs = what_if(records, CONTEXT, ["fitness", "random", "least-loaded-feasible"], SIZES)
    for run in runs.values():
        assert run.rounds == [1, 2, 3]
        assert all(0 < a <= 4 for a in run.assigned)
        assert run.predicted_late[1:] == [0, 0]
        assert run.agreement == [None, None, None]  # nothing recorded to agree with
    # `random` gives every device min(k_c, E) experts whatever the deadline: dev-00001 too.
    assert runs["random"].predicted_late[0] == 1


def test_a_strategy_agrees_fully_with_its_own_recorded_assignments(tmp_path: Path) -> None:
    plain = _fleet(3, {}, {})
    first = what_if(plain, CONTEXT, ["fitness"], SIZES)["fitness"]
    assert first.agreement == [None, None, None]
    # Record what fitness assigned as "the recorded run": it must reproduce all of it.
    from recording.whatif import fold_strategy

    rounds = recorded_rounds(plain)
    plans: dict[int, dict[str, tuple[int, ...]]] = {}
    import services.matcher.planning as planning

    original = planning.RoundPlanner.__call__

    def spy(self, round, profiles, load):  # type: ignore[no-untyped-def]
        plan = original(self, round, profiles, load)
        plans[round] = dict(plan.experts)
        return plan

    planning.RoundPlanner.__call__ = spy  # type: ignore[method-assign]
    try:
        fold_strategy("fitness", rounds, CONTEXT, recorded={}, times={}, part_bytes=SIZES)
    finally:
        planning.RoundPlanner.__call__ = original  # type: ignore[method-assign]
    recorded = _fleet(3, {}, plans)
    runs = what_if(recorded, CONTEXT, ["fitness", "random"], SIZES)
    assert runs["fitness"].agreement == [1.0, 1.0, 1.0]
    summary = write_summary(runs, tmp_path, source="x.parquet", info={"k": 1})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    for name in ("fitness", "random"):
        figures = on_disk["strategies"][name]
        for key in (
            "rounds",
            "load_cv_mean",
            "assigned_per_round",
            "predicted_late",
            "agreement_with_recorded",
        ):
            assert key in figures
    assert on_disk["strategies"]["fitness"]["agreement_with_recorded"] == pytest.approx(1.0)
    assert (tmp_path / "whatif.png").stat().st_size > 0
