"""How a device's real round differs from its profile: devices are not clocks.

A `DeviceCapability` is what a device is on average. In a given round its real compute and link
vary around that (a per-round lognormal jitter of each), now and then it is a straggler (a
background job, thermal throttling: compute 3-10× slower), its battery drains through the day
and recharges at night, and its availability drifts over the run (some devices come online
more often as the run goes on, others less). The simulation charges these real values; devices
report only what they measured in their previous round, so the profiler's EWMA and the
matcher's deadline estimates lag and can be wrong, as on a real fleet.

Every draw is a function of (seed, device, round) through `moe.scenario.derived_seed`, so every
strategy of a paired seed meets the same conditions whatever it assigned, and a device on the
bus draws exactly what the in-process simulation draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moe.fleet import DeviceCapability


@dataclass(frozen=True, slots=True)
class DynamicsSpec:
    """The variation of devices around their profiles (the defaults are the documented fleet).

    Attributes:
        compute_sigma: log-space σ of the per-round compute factor (0.25: the middle 90% of
            rounds spans ~0.66×–1.5× the device's mean step time).
        link_sigma: log-space σ of the per-round bandwidth factor (0.35: ~0.56×–1.8×).
        straggler_prob: chance per (device, round) of a straggling round.
        straggler_factor: compute slow-down of a straggling round, uniform in this range.
        battery_drain: charge lost per round while the device is in its day (the first
            `day_fraction` of its 24-round cycle); it recharges to its full charge at night.
        day_fraction: share of the cycle that drains the battery.
        battery_offline: below this charge a device stays offline (it saves its battery).
        availability_drift: the largest relative change of a device's availability over
            `drift_rounds` rounds (each device draws its own in ±this, linear in the round).
        drift_rounds: rounds over which the drift builds up fully.
        period_rounds: the daily cycle, in rounds (as `moe.fleet.online_probability`).
    """

    compute_sigma: float = 0.25
    link_sigma: float = 0.35
    straggler_prob: float = 0.05
    straggler_factor: tuple[float, float] = (3.0, 10.0)
    battery_drain: float = 0.02
    day_fraction: float = 0.5
    battery_offline: float = 0.05
    availability_drift: float = 0.5
    drift_rounds: int = 200
    period_rounds: int = 24

    def __post_init__(self) -> None:
        if min(self.compute_sigma, self.link_sigma, self.battery_drain) < 0:
            raise ValueError("DynamicsSpec sigmas and drain must be >= 0")
        if not 0 <= self.straggler_prob <= 1:
            raise ValueError("DynamicsSpec.straggler_prob must be in [0, 1]")
        low, high = self.straggler_factor
        if not 1 <= low <= high:
            raise ValueError("DynamicsSpec.straggler_factor must be 1 <= low <= high")
        if not (0 <= self.day_fraction <= 1 and 0 <= self.availability_drift < 1):
            raise ValueError("DynamicsSpec.day_fraction in [0, 1], availability_drift in [0, 1)")
        if self.drift_rounds < 1 or self.period_rounds < 1:
            raise ValueError("DynamicsSpec.drift_rounds and period_rounds must be >= 1")


# No variation: a device is its profile in every round (tests, and the exact-clock ablation).
STATIC = DynamicsSpec(
    compute_sigma=0.0,
    link_sigma=0.0,
    straggler_prob=0.0,
    battery_drain=0.0,
    battery_offline=0.0,
    availability_drift=0.0,
)


@dataclass(frozen=True, slots=True)
class RoundConditions:
    """What a device really is in one round.

    Attributes:
        compute_ms_per_sample: its real training time per sample this round.
        bandwidth_kbps: its real link rate this round.
        battery: its charge at the round's start.
        availability: its availability this round (before the daily cycle).
        straggler: whether this round is a straggling one.
    """

    compute_ms_per_sample: float
    bandwidth_kbps: float
    battery: float
    availability: float
    straggler: bool


def round_conditions(
    capability: DeviceCapability, round_: int, seed: int, spec: DynamicsSpec
) -> RoundConditions:
    """The conditions of `capability`'s device in `round_`, from `seed` (that device's and
    round's own derived seed: the caller derives it)."""
    rng = np.random.default_rng(seed)
    # Always four draws in one order, so changing one parameter leaves the others' draws.
    z_compute, z_link, u_straggle, u_factor = (
        rng.standard_normal(2).tolist() + rng.random(2).tolist()
    )
    straggler = u_straggle < spec.straggler_prob
    compute = capability.compute_ms_per_sample * math.exp(spec.compute_sigma * z_compute)
    if straggler:
        low, high = spec.straggler_factor
        compute *= low + (high - low) * u_factor
    return RoundConditions(
        compute_ms_per_sample=compute,
        bandwidth_kbps=capability.bandwidth_kbps * math.exp(spec.link_sigma * z_link),
        battery=battery_at(capability, round_, spec),
        availability=drifted_availability(capability, round_, spec),
        straggler=straggler,
    )


def battery_at(capability: DeviceCapability, round_: int, spec: DynamicsSpec) -> float:
    """Charge at the start of `round_`: full (the device's `battery`) at the start of its day,
    down by `battery_drain` per round of day, back to full at night."""
    position = (round_ / spec.period_rounds + capability.phase) % 1.0
    day_rounds = min(position, spec.day_fraction) * spec.period_rounds
    return max(0.0, capability.battery - spec.battery_drain * day_rounds)


def drifted_availability(capability: DeviceCapability, round_: int, spec: DynamicsSpec) -> float:
    """Availability in `round_`: the device's own, drifting linearly by a device-specific
    share in ±`availability_drift` over `drift_rounds` (the phase fixes the direction, so it
    needs no draw of its own), clipped to [0, 1]."""
    direction = 2.0 * capability.phase - 1.0
    progress = min(max(round_, 0) / spec.drift_rounds, 1.0)
    factor = 1.0 + spec.availability_drift * direction * progress
    return min(1.0, max(0.0, capability.availability * factor))
