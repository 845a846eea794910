"""Client profiles: what the system knows about each device, folded from its reports.

A `ClientProfile` is an immutable value; every report (telemetry, status, round outcome) is folded
into a new profile by a pure function, so the profiler service and the in-process simulation run
the same arithmetic and a profile can be rebuilt by replaying its inputs.

Field names follow the wire form `schemas.messages.ProfileSnapshot` so a service converts 1:1;
the differences are typing only: experts are keyed by index here (`3`) and by part id on the wire
(`"expert-3"`), and `expert_trials` / `last_round` have no wire field yet.

Smoothing: compute time and bandwidth are EWMAs, `new = (1 − α)·old + α·measured`, seeded by the
first measurement. Memory, battery, sample count and the routing histogram are taken as reported
(they are states, not noisy measurements). Completion is an EWMA of 0/1 outcomes seeded at 1.0, an
optimistic prior that gives a new device the benefit of the doubt (as Oort does for unexplored
clients). Expert quality Q(c, e) is an EWMA of `exp(−β·loss)` of the samples c routed to e, seeded
by its first measurement; experts c did not train keep their old value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

# Memory thresholds (MB) of `capacity_from_memory`: below 1536 MB a device holds one expert,
# below 3072 MB two, from 3072 MB three. The budget covers the shared encoder, optimizer state and
# activations for local batches, and leaves the device's own workload its memory. One constant
# for the fleet generator (`moe.fleet`) and the profiler, so a simulated device's k_c and the one
# the profiler derives from its telemetry agree; with the fleet's memory distribution
# P(k_c = 1, 2, 3) ≈ 0.32, 0.43, 0.25.
DEFAULT_MEMORY_THRESHOLDS_MB: tuple[float, ...] = (1536.0, 3072.0)

# The prior completion rate of a device that has not finished (or missed) a round yet.
COMPLETION_PRIOR = 1.0


def _frozen_map(m: Mapping[int, float] | Mapping[int, int]) -> Mapping[int, float]:
    return MappingProxyType(dict(m))


@dataclass(frozen=True, slots=True)
class TelemetryReading:
    """One telemetry report in domain form (the wire form is `schemas.messages.Telemetry`).

    Attributes:
        device_id: the device.
        device_type: hardware type index (0..255).
        compute_ms_per_sample: measured local training step time per sample, in ms.
        bandwidth_kbps: measured link bandwidth, in kbit/s.
        memory_mb: memory budget the device grants to training.
        battery: charge in [0, 1].
        num_samples: local training samples.
        routing_histogram: per expert, samples (or fractions) of the device's data that the
            current global gate routes to that expert. Empty when not measured yet.
    """

    device_id: str
    device_type: int
    compute_ms_per_sample: float
    bandwidth_kbps: float
    memory_mb: float
    battery: float
    num_samples: int
    routing_histogram: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("compute_ms_per_sample", "bandwidth_kbps", "memory_mb"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"TelemetryReading.{name} must be finite and > 0, got {v!r}")
        if not 0.0 <= self.battery <= 1.0:
            raise ValueError(f"TelemetryReading.battery must be in [0, 1], got {self.battery!r}")
        if self.num_samples < 0:
            raise ValueError("TelemetryReading.num_samples must be >= 0")
        if any(not (math.isfinite(h) and h >= 0) for h in self.routing_histogram):
            raise ValueError("TelemetryReading.routing_histogram values must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """Everything the matcher knows about one device.

    Attributes:
        device_id: the device.
        device_type: hardware type index.
        compute_ms_per_sample: EWMA of measured training time per sample (ms).
        bandwidth_kbps: EWMA of measured link bandwidth (kbit/s).
        memory_mb: latest reported memory budget (MB).
        capacity: k_c, experts the device can hold and train, from `memory_mb`.
        battery: latest reported charge in [0, 1].
        online: whether the device is connected (status / last will, or any telemetry).
        num_samples: local training samples.
        completion_rate: EWMA of "finished its assigned round before the deadline", in [0, 1].
        rounds_assigned: rounds the device was assigned work in.
        rounds_completed: rounds it finished before the deadline.
        last_seen: time (s) of its latest report.
        last_round: latest round it was assigned work in (-1 = never).
        routing_histogram: per expert, what the current gate routes of its data (as reported).
        expert_quality: Q(c, e) by expert index, EWMA of exp(−β·loss); absent = never measured.
        expert_trials: rounds in which the device reported a loss for each expert (the UCB
            exploration count of the fitness score); absent = never tried.
        data_loss: latest reported RMS loss of its data under the global model (None: never).
        expert_data_loss: latest reported RMS loss per expert of the samples routed to it.
    """

    device_id: str
    device_type: int
    compute_ms_per_sample: float
    bandwidth_kbps: float
    memory_mb: float
    capacity: int
    battery: float
    online: bool
    num_samples: int
    completion_rate: float = COMPLETION_PRIOR
    rounds_assigned: int = 0
    rounds_completed: int = 0
    last_seen: float = 0.0
    last_round: int = -1
    routing_histogram: tuple[float, ...] = ()
    expert_quality: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))
    expert_trials: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    data_loss: float | None = None
    expert_data_loss: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))

    def affinity(self, num_experts: int) -> tuple[float, ...]:
        """A(c, ·): the routing histogram normalised to fractions, padded/cut to `num_experts`.

        All zeros when the device has not reported a histogram (or routed nothing).
        """
        h = tuple(self.routing_histogram[:num_experts]) + (0.0,) * max(
            0, num_experts - len(self.routing_histogram)
        )
        total = math.fsum(h)
        if total <= 0.0:
            return (0.0,) * num_experts
        return tuple(x / total for x in h)


def capacity_from_memory(
    memory_mb: float, thresholds_mb: tuple[float, ...] = DEFAULT_MEMORY_THRESHOLDS_MB
) -> int:
    """k_c from a memory budget: 1 plus the number of thresholds the budget reaches.

    With the default thresholds (1536, 3072): < 1536 MB → 1, [1536, 3072) MB → 2, else 3.
    Every device that reports telemetry can hold at least one expert; whether it can *train* it
    in time is the deadline capacity's business (`moe.matching.fitness.deadline_capacity`).

    Args:
        memory_mb: the device's memory budget for training.
        thresholds_mb: ascending thresholds; k_c ranges over 1 .. len(thresholds_mb) + 1.

    Returns:
        k_c.
    """
    if list(thresholds_mb) != sorted(thresholds_mb):
        raise ValueError("thresholds_mb must be ascending")
    return 1 + sum(1 for t in thresholds_mb if memory_mb >= t)


def _ewma(old: float, new: float, alpha: float) -> float:
    return (1.0 - alpha) * old + alpha * new


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")


def fold_telemetry(
    profile: ClientProfile | None,
    reading: TelemetryReading,
    *,
    now: float,
    alpha: float = 0.3,
    thresholds_mb: tuple[float, ...] = DEFAULT_MEMORY_THRESHOLDS_MB,
) -> ClientProfile:
    """Fold one telemetry report into a device's profile.

    Args:
        profile: the current profile, or None for a device seen for the first time.
        reading: the report.
        now: arrival time (s); becomes `last_seen`.
        alpha: EWMA weight of the new compute / bandwidth measurement.
        thresholds_mb: memory thresholds of `capacity_from_memory`.

    Returns:
        The new profile. The device is online (it just reported).
    """
    _check_alpha(alpha)
    capacity = capacity_from_memory(reading.memory_mb, thresholds_mb)
    if profile is None:
        return ClientProfile(
            device_id=reading.device_id,
            device_type=reading.device_type,
            compute_ms_per_sample=reading.compute_ms_per_sample,
            bandwidth_kbps=reading.bandwidth_kbps,
            memory_mb=reading.memory_mb,
            capacity=capacity,
            battery=reading.battery,
            online=True,
            num_samples=reading.num_samples,
            last_seen=now,
            routing_histogram=tuple(reading.routing_histogram),
        )
    if profile.device_id != reading.device_id:
        raise ValueError(f"telemetry of {reading.device_id!r} folded into {profile.device_id!r}")
    return replace(
        profile,
        device_type=reading.device_type,
        compute_ms_per_sample=_ewma(
            profile.compute_ms_per_sample, reading.compute_ms_per_sample, alpha
        ),
        bandwidth_kbps=_ewma(profile.bandwidth_kbps, reading.bandwidth_kbps, alpha),
        memory_mb=reading.memory_mb,
        capacity=capacity,
        battery=reading.battery,
        online=True,
        num_samples=reading.num_samples,
        last_seen=max(profile.last_seen, now),
        # An empty histogram means "not measured this time": keep the last one.
        routing_histogram=tuple(reading.routing_histogram) or profile.routing_histogram,
    )


def fold_status(profile: ClientProfile, *, online: bool, now: float) -> ClientProfile:
    """Fold an online/offline status (or the device's last will) into its profile.

    A status from a device without a profile carries no capabilities; the caller keeps it until
    the first telemetry arrives (or ignores it).
    """
    return replace(profile, online=online, last_seen=max(profile.last_seen, now))


def fold_round_outcome(
    profile: ClientProfile,
    *,
    round: int,
    assigned: bool,
    completed_in_time: bool,
    expert_losses: Mapping[int, float],
    data_loss: float | None = None,
    expert_data_loss: Mapping[int, float] | None = None,
    alpha: float = 0.3,
    beta: float = 1.0,
) -> ClientProfile:
    """Fold the outcome of one round into a device's profile.

    Args:
        profile: the current profile.
        round: the round that closed.
        assigned: whether the device was assigned work in it.
        completed_in_time: whether its update arrived before the deadline (ignored when not
            assigned).
        expert_losses: mean local loss of the samples routed to each expert it trained; each
            becomes the measurement `exp(−β·loss)` of Q(c, e). Experts not in it keep their Q.
        data_loss: RMS per-sample loss of the device's data under the global model it started
            from (before training): replaces the profile's (None keeps it).
        expert_data_loss: the same per trained expert (samples its masked gate routed there).
        alpha: EWMA weight of this round's completion and quality measurements.
        beta: loss scale of the quality measurement (β = 1 maps a loss of 0.7 to ≈ 0.5).

    Returns:
        The new profile.
    """
    _check_alpha(alpha)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    quality = dict(profile.expert_quality)
    trials = dict(profile.expert_trials)
    pre = dict(profile.expert_data_loss)
    for expert, loss in (expert_data_loss or {}).items():
        if not (expert >= 0 and math.isfinite(loss) and loss >= 0):
            raise ValueError(f"data loss of expert {expert} must be finite and >= 0, got {loss!r}")
        pre[expert] = loss
    if data_loss is not None and not (math.isfinite(data_loss) and data_loss >= 0):
        raise ValueError(f"data_loss must be finite and >= 0, got {data_loss!r}")
    measured_loss = profile.data_loss if data_loss is None else data_loss
    for expert, loss in expert_losses.items():
        if expert < 0:
            raise ValueError(f"expert index must be >= 0, got {expert}")
        if not (math.isfinite(loss) and loss >= 0):
            raise ValueError(f"loss of expert {expert} must be finite and >= 0, got {loss!r}")
        measured = math.exp(-beta * loss)
        old = quality.get(expert)
        quality[expert] = measured if old is None else _ewma(old, measured, alpha)
        trials[expert] = trials.get(expert, 0) + 1
    if not assigned:
        return replace(
            profile,
            expert_quality=_frozen_map(quality),
            expert_trials=MappingProxyType(trials),
            data_loss=measured_loss,
            expert_data_loss=_frozen_map(pre),
        )
    return replace(
        profile,
        rounds_assigned=profile.rounds_assigned + 1,
        rounds_completed=profile.rounds_completed + int(completed_in_time),
        completion_rate=_ewma(profile.completion_rate, float(completed_in_time), alpha),
        last_round=max(profile.last_round, round),
        expert_quality=_frozen_map(quality),
        expert_trials=MappingProxyType(trials),
        data_loss=measured_loss,
        expert_data_loss=_frozen_map(pre),
    )


def staleness(profile: ClientProfile, now: float) -> float:
    """Seconds since the device's latest report (0 when `now` is not after it)."""
    return max(0.0, now - profile.last_seen)
