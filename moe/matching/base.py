"""The matching strategy interface and the per-round input every strategy sees."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class MatchingInput:
    """What the matcher knows when a round opens. Rows are online clients, columns experts.

    Attributes:
        round: the round being opened.
        capacity: k_c, how many experts client c can hold and train (from its memory budget).
        deadline_capacity: how many experts c can train *and* upload before the round deadline,
            from its profiled compute and bandwidth (may be < capacity, or 0).
        affinity: A(c, e), fraction of c's samples the current global gate routes to e.
        quality: Q(c, e), EMA of measured fitness from past rounds; NaN where never measured.
        capability: S(c) in [0, 1], normalised compute, bandwidth, battery, reliability.
        expert_clients: clients assigned to each expert recently (load monitor, EWMA).
        expert_samples: samples routed to each expert so far (load monitor).
        rounds_since_update: rounds since each expert last received an applied update.
        lower: L_e, minimum clients per expert this round (may be 0): a hard floor set by the
            caller. `FitnessStrategy` may raise it by its own policy where feasible.
        upper: U_e, maximum clients per expert this round: a hard ceiling set by the caller
            (use C for "no ceiling"). `FitnessStrategy` may lower it by its own policy.
        trials: n(c, e), rounds in which c trained e (the exploration count of the fitness
            score); None means "derive it": 0 where `quality` is NaN, 1 elsewhere.
        num_samples: |B_c|, the client's local samples (None: unknown, strategies take 1).
        data_loss: the root mean squared per-sample loss of the client's data under the
            current global model, measured by the device before the round (Oort's statistical
            utility is |B_c|·data_loss); NaN where not reported (None: none known).
        expert_loss: (C, E) the same, over the samples the current gate routes to each expert
            (NaN where none routed or not reported; None: none known).
        last_round: the last round c was assigned work in (-1: never; None: unknown).
        time_first: estimated seconds for c to move and train the shared part and one expert
            (None: unknown).
        time_per_expert: estimated seconds each further expert adds (None: unknown).
        deadline_s: the round's deadline, seconds from assignment (None: unknown).

    Every strategy gets the same input: the estimates are the profiler's (what devices
    reported), never the simulation's true round times.

    Shapes: capacity, deadline_capacity and capability are (C,); affinity, quality and trials
    are (C, E); the expert_* arrays, rounds_since_update, lower and upper are (E,). A mismatch
    raises ValueError at construction.
    """

    round: int
    capacity: IntArray
    deadline_capacity: IntArray
    affinity: FloatArray
    quality: FloatArray
    capability: FloatArray
    expert_clients: FloatArray
    expert_samples: FloatArray
    rounds_since_update: IntArray
    lower: IntArray
    upper: IntArray
    trials: IntArray | None = None
    num_samples: FloatArray | None = None
    data_loss: FloatArray | None = None
    expert_loss: FloatArray | None = None
    last_round: IntArray | None = None
    time_first: FloatArray | None = None
    time_per_expert: FloatArray | None = None
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        c, e = np.shape(self.affinity) if np.ndim(self.affinity) == 2 else (-1, -1)
        if c < 0:
            raise ValueError(f"affinity must be 2-D (C, E), got shape {np.shape(self.affinity)}")
        expected = {
            "capacity": (c,),
            "deadline_capacity": (c,),
            "capability": (c,),
            "quality": (c, e),
            "expert_clients": (e,),
            "expert_samples": (e,),
            "rounds_since_update": (e,),
            "lower": (e,),
            "upper": (e,),
        }
        optional = {
            "trials": (c, e),
            "num_samples": (c,),
            "data_loss": (c,),
            "expert_loss": (c, e),
            "last_round": (c,),
            "time_first": (c,),
            "time_per_expert": (c,),
        }
        expected.update({k: v for k, v in optional.items() if getattr(self, k) is not None})
        for name, shape in expected.items():
            got = np.shape(getattr(self, name))
            if got != shape:
                raise ValueError(f"MatchingInput.{name} must have shape {shape}, got {got}")

    @property
    def num_clients(self) -> int:
        """C, the number of clients in this round."""
        return int(self.capacity.shape[0])

    @property
    def num_experts(self) -> int:
        """E, the number of experts."""
        return int(self.affinity.shape[1])

    def estimated_time(self, experts: IntArray) -> FloatArray:
        """Estimated round seconds of each client with `experts[c]` experts (C,); zeros when
        the time estimates are unknown."""
        m = np.maximum(np.asarray(experts, dtype=np.float64), 1.0)
        if self.time_first is None or self.time_per_expert is None:
            return np.zeros(self.num_clients)
        out: FloatArray = self.time_first + (m - 1.0) * self.time_per_expert
        return out


class MatchingStrategy(ABC):
    """Decides which client trains which experts in one round.

    Implementations are pure: same input and same `rng` state give the same assignment.
    """

    name: ClassVar[str]

    @abstractmethod
    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Return x with shape (C, E): x[c, e] is True when client c trains expert e.

        Args:
            problem: the round's matching input.
            rng: the only source of randomness a strategy may use.

        Returns:
            A boolean matrix. `FitnessStrategy` respects every constraint (effective capacity,
            L_e, U_e). The baselines give each client exactly min(k_c, E) experts and ignore
            fitness, load and the per-expert bounds by design: they are what the fitness
            strategy is compared against.

        Raises:
            moe.errors.InfeasibleAssignmentError: when the constraints admit no assignment.
        """
