"""What one simulated federated run records, round by round."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """The measurable outcome of one federated round.

    Attributes:
        round: 1-based round number (accuracy is measured after the round's aggregation).
        accuracy: test accuracy of the global model after this round.
        load_cv: std/mean of clients assigned per expert this round.
        late_updates: updates that missed the round deadline (not aggregated).
        updates_applied: updates aggregated this round.
        bytes_down: serialized bytes of the parts sent to the assigned devices.
        bytes_up: serialized bytes of the devices' updates (late ones included: they were sent).
        round_time_s: simulated wall time of the round (the slowest in-time device, or the
            deadline when a device was late).
    """

    round: int
    accuracy: float
    load_cv: float
    late_updates: int
    updates_applied: int
    bytes_down: int
    bytes_up: int
    round_time_s: float


@dataclass(frozen=True, slots=True)
class RunResult:
    """One (regime, strategy, seed) run."""

    regime: str
    strategy: str
    seed: int
    records: tuple[RoundRecord, ...]
    whole_model_bytes: int = 0  # serialized size of every part, for the bytes ratio
    extra: dict[str, float] = field(default_factory=dict)
