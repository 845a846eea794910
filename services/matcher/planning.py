"""One round's matching, exactly as protocol step 8 says (pure: no clock, no broker).

    candidates = profiles online whose snapshot round == r, sorted by device id
    problem    = moe.matching.build_matching_input(candidates, load, round=r,
                     deadline_s=scenario deadline (simulated s), shared/expert bytes, epochs)
    x          = strategy.assign(problem, scenario.strategy_rng(r))

The in-process simulation (`moe.simulation`) builds the same input from the same profiles, so
the bus and the simulation give the same assignment for the same profiles. The deadline here is
the *simulated* one (what a device can finish in scenario seconds), as in the simulation; the
wall deadline of the round is the clock's business. A device with no expert assigned does not
train (as in the simulation), so it gets no `Assignment` and does not count in the quorum.

`RoundPlanner` binds the context to ONE strategy instance that plans every round of a run, as
the simulation runs one instance over all its rounds: a stateful strategy (Oort's pacer and
utility history, `moe.matching.oort`) keeps its state from round to round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from moe.load import ExpertLoadState
from moe.matching import MatchingStrategy, build_matching_input
from moe.parts import SHARED, expert_part_id
from moe.scenario import Scenario
from moe.wire import client_profile
from schemas.messages import ProfileSnapshot


def model_part_ids(num_experts: int) -> tuple[str, ...]:
    """Every part of the model: `shared`, then `expert-0` … `expert-{E-1}`."""
    return (SHARED, *(expert_part_id(e) for e in range(num_experts)))


@dataclass(frozen=True, slots=True)
class MatchingContext:
    """What the scenario fixes for every round's matching input."""

    num_experts: int
    deadline_s: float  # simulated seconds, as the simulation uses
    shared_bytes: float
    expert_bytes: float
    epochs: int
    rng: Callable[[int], np.random.Generator]  # the strategy's randomness for round r

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> MatchingContext:
        """The context of `scenario` (its deadline, part sizes, epochs, strategy seeds)."""
        sizes = scenario.part_bytes
        return cls(
            num_experts=scenario.config.num_experts,
            deadline_s=scenario.config.deadline_s,
            shared_bytes=float(sizes[SHARED]),
            expert_bytes=float(sizes[expert_part_id(0)]),
            epochs=scenario.config.epochs,
            rng=scenario.strategy_rng,
        )


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """Who trains what in one round.

    Attributes:
        round: the round.
        candidates: device ids matched (rows of `assignment`), sorted.
        assignment: x[c, e], True when candidate c trains expert e.
        experts: the devices with at least one expert, sorted by id, with their experts.
    """

    round: int
    candidates: tuple[str, ...]
    assignment: NDArray[np.bool_]
    experts: Mapping[str, tuple[int, ...]]

    @property
    def devices(self) -> int:
        """Devices that train this round."""
        return len(self.experts)

    def expected_parts(self, num_experts: int) -> dict[str, int]:
        """Devices assigned to every part (zeros included): the aggregators' quorum."""
        counts = self.assignment.sum(axis=0, dtype=np.int64) if self.candidates else None
        out = {SHARED: self.devices}
        for e in range(num_experts):
            out[expert_part_id(e)] = int(counts[e]) if counts is not None else 0
        return out


class RoundPlanner:
    """The clock's planner (`clock.Planner`): every round of a run is planned with the same
    strategy instance and context (never a new strategy per round).

    Attributes:
        context: the scenario's matching context.
        strategy: the one strategy instance of the run.
    """

    def __init__(self, context: MatchingContext, strategy: MatchingStrategy) -> None:
        self.context = context
        self.strategy = strategy

    def __call__(
        self, round: int, profiles: Sequence[ProfileSnapshot], load: ExpertLoadState
    ) -> RoundPlan:
        """The plan of `round` over the known `profiles` and `load` (`plan_round`)."""
        return plan_round(profiles, load, round=round, context=self.context, strategy=self.strategy)


def candidate_profiles(snapshots: Iterable[ProfileSnapshot], round: int) -> list[ProfileSnapshot]:
    """The profiles that announced themselves online for `round`, sorted by device id."""
    chosen = [s for s in snapshots if s.online and s.round == round]
    return sorted(chosen, key=lambda s: s.device_id)


def plan_round(
    snapshots: Iterable[ProfileSnapshot],
    load: ExpertLoadState,
    *,
    round: int,
    context: MatchingContext,
    strategy: MatchingStrategy,
) -> RoundPlan:
    """Match the candidates of `round` (see the module docstring)."""
    if load.num_experts != context.num_experts:
        raise ValueError(f"load has {load.num_experts} experts, the model {context.num_experts}")
    candidates = candidate_profiles(snapshots, round)
    e = context.num_experts
    if not candidates:
        return RoundPlan(round, (), np.zeros((0, e), dtype=np.bool_), {})
    problem = build_matching_input(
        [client_profile(s) for s in candidates],
        load,
        round=round,
        deadline_s=context.deadline_s,
        shared_bytes=context.shared_bytes,
        expert_bytes=context.expert_bytes,
        epochs=context.epochs,
    )
    x = np.asarray(strategy.assign(problem, context.rng(round)), dtype=np.bool_)
    if x.shape != (len(candidates), e):
        raise ValueError(f"strategy returned shape {x.shape}, expected {(len(candidates), e)}")
    experts = {
        s.device_id: tuple(int(j) for j in np.flatnonzero(row))
        for s, row in zip(candidates, x, strict=True)
        if row.any()
    }
    return RoundPlan(round, tuple(s.device_id for s in candidates), x, experts)
