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
        updates_applied: devices whose update was aggregated this round.
        bytes_down: serialized bytes of the parts sent to the assigned devices.
        bytes_up: serialized bytes of the devices' updates (late ones included: they were sent).
        bytes_control: every other byte that crossed MQTT in the round: status, telemetry,
            round marker and gate rows of the online devices, assignments and acks of the
            assigned ones (`moe.simulation.traffic`).
        round_time_s: simulated wall time of the round (the slowest in-time device, or the
            deadline when a device was late).
        loss: test cross-entropy of the global model after this round.
        devices_online: devices that announced themselves for the round.
        devices_assigned: devices given at least one expert.
        updates_rejected: in-time updates the aggregator refused (e.g. non-finite weights).
    """

    round: int
    accuracy: float
    load_cv: float
    late_updates: int
    updates_applied: int
    bytes_down: int
    bytes_up: int
    round_time_s: float
    loss: float = 0.0
    devices_online: int = 0
    devices_assigned: int = 0
    updates_rejected: int = 0
    bytes_control: int = 0


@dataclass(frozen=True, slots=True)
class RunResult:
    """One (regime, strategy, seed) run.

    Attributes:
        regime: the data regime.
        strategy: the matching strategy's name.
        seed: the scenario seed.
        records: rounds 1..R in order.
        whole_model_bytes: serialized size of every part (one PartVersion each), for the
            bytes ratio.
        initial_accuracy: test accuracy of the initial model (the genesis round 0).
        extra: free-form figures.
    """

    regime: str
    strategy: str
    seed: int
    records: tuple[RoundRecord, ...]
    whole_model_bytes: int = 0
    initial_accuracy: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
