"""Global expert load: how much work each expert gets, as the load monitor sees it.

`ExpertLoadState` is an immutable value with pure transitions, driven by three events:

- `on_assignment`: the matcher published a round's assignment (clients per expert this round);
- `on_update_applied`: the aggregator applied one device's update of one expert;
- `on_round_closed`: the round ended: this round's counts fold into the EWMA of clients per
  expert, experts without an applied update this round grow `rounds_since_update`.

Field names follow the wire form `schemas.messages.ExpertLoad` (`assigned_clients`,
`accepted_updates`, `samples_routed`, `rounds_since_update`; `cv` and `max_mean` come from
`imbalance`); `clients_ewma` and `rounds_closed` have no wire field yet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def _frozen(a: ArrayLike, dtype: type[np.generic]) -> NDArray[np.generic]:
    # Copy, then make read-only: the state is a value, no holder may mutate another's arrays.
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ExpertLoadState:
    """Per-expert load. Every array has shape (E,).

    Attributes:
        assigned_clients: clients assigned to each expert in the current round.
        accepted_updates: updates applied to each expert in the current round.
        clients_ewma: EWMA over closed rounds of clients assigned per expert.
        samples_routed: samples routed to each expert by applied updates, cumulative.
        rounds_since_update: closed rounds since each expert last had an update applied.
        rounds_closed: rounds closed so far.
    """

    assigned_clients: IntArray
    accepted_updates: IntArray
    clients_ewma: FloatArray
    samples_routed: FloatArray
    rounds_since_update: IntArray
    rounds_closed: int = 0

    def __post_init__(self) -> None:
        ints = ("assigned_clients", "accepted_updates", "rounds_since_update")
        for name in (*ints, "clients_ewma", "samples_routed"):
            dtype = np.int64 if name in ints else np.float64
            arr = _frozen(getattr(self, name), dtype)
            if arr.ndim != 1:
                raise ValueError(f"ExpertLoadState.{name} must be 1-D, got shape {arr.shape}")
            object.__setattr__(self, name, arr)
        if len({getattr(self, n).shape for n in (*ints, "clients_ewma", "samples_routed")}) != 1:
            raise ValueError("ExpertLoadState arrays must all have one length (E)")

    @classmethod
    def empty(cls, num_experts: int) -> ExpertLoadState:
        """The state before any round: no load anywhere."""
        if num_experts <= 0:
            raise ValueError("num_experts must be > 0")
        zi = np.zeros(num_experts, dtype=np.int64)
        zf = np.zeros(num_experts, dtype=np.float64)
        return cls(zi, zi, zf, zf, zi)

    @property
    def num_experts(self) -> int:
        """E."""
        return int(self.assigned_clients.shape[0])

    @property
    def pending_updates(self) -> IntArray:
        """Assigned clients whose update has not been applied yet this round (≥ 0)."""
        diff: IntArray = self.assigned_clients - self.accepted_updates
        return np.maximum(diff, 0).astype(np.int64)


def on_assignment(state: ExpertLoadState, assignment: NDArray[np.bool_]) -> ExpertLoadState:
    """Count a round's assignment: `assignment[c, e]` is True when client c trains expert e.

    Counts add up, so a round assigned in several batches (late joiners) is counted whole.
    """
    x = np.asarray(assignment)
    if x.ndim != 2 or x.shape[1] != state.num_experts:
        raise ValueError(f"assignment must have shape (C, {state.num_experts}), got {x.shape}")
    return replace(state, assigned_clients=state.assigned_clients + x.sum(axis=0, dtype=np.int64))


def on_update_applied(state: ExpertLoadState, expert: int, samples: float) -> ExpertLoadState:
    """Count one applied update of `expert`, carrying `samples` routed samples."""
    if not 0 <= expert < state.num_experts:
        raise ValueError(f"expert {expert} out of range 0..{state.num_experts - 1}")
    if not (np.isfinite(samples) and samples >= 0):
        raise ValueError(f"samples must be finite and >= 0, got {samples!r}")
    accepted = state.accepted_updates.copy()
    accepted[expert] += 1
    routed = state.samples_routed.copy()
    routed[expert] += samples
    since = state.rounds_since_update.copy()
    since[expert] = 0
    return replace(
        state, accepted_updates=accepted, samples_routed=routed, rounds_since_update=since
    )


def on_part_closed(
    state: ExpertLoadState, expert: int, applied: int, samples: float
) -> ExpertLoadState:
    """Count a closed expert part: `applied` updates carrying `samples` routed samples in all.

    The same as `applied` calls of `on_update_applied` whose samples sum to `samples`, for a
    consumer that sees the aggregator's per-part result rather than every update.
    """
    if applied < 0:
        raise ValueError(f"applied must be >= 0, got {applied}")
    if applied == 0:
        return state
    state = on_update_applied(state, expert, samples)
    accepted = state.accepted_updates.copy()
    accepted[expert] += applied - 1
    return replace(state, accepted_updates=accepted)


def on_round_closed(state: ExpertLoadState, alpha: float = 0.5) -> ExpertLoadState:
    """Close the round: fold its clients per expert into the EWMA and start a new round.

    Args:
        state: the current state.
        alpha: EWMA weight of the closing round (the first closed round seeds the EWMA).

    Returns:
        The state of the next round: per-round counts at zero, experts that had no update
        applied this round one round staler.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    this_round = state.assigned_clients.astype(np.float64)
    ewma = (
        this_round
        if state.rounds_closed == 0
        else (1.0 - alpha) * state.clients_ewma + alpha * this_round
    )
    zeros = np.zeros(state.num_experts, dtype=np.int64)
    return replace(
        state,
        assigned_clients=zeros,
        accepted_updates=zeros,
        clients_ewma=ewma,
        rounds_since_update=state.rounds_since_update + (state.accepted_updates == 0),
        rounds_closed=state.rounds_closed + 1,
    )


def imbalance(counts: ArrayLike) -> tuple[float, float]:
    """Load imbalance of per-expert counts: (CV, max/mean).

    CV is the population standard deviation over the mean. Both are 0 when the mean is 0 (no
    load is perfectly balanced) and for an empty input.
    """
    x = np.asarray(counts, dtype=np.float64).ravel()
    if x.size == 0:
        return 0.0, 0.0
    mean = float(x.mean())
    if mean <= 0.0:
        return 0.0, 0.0
    return float(x.std() / mean), float(x.max() / mean)
