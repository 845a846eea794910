"""Seeded device capabilities (FedScale-like), availability, and the round-time model.

FedScale's client traces give, per client, ``computation`` (ms per sample) and
``communication`` (kbit/s), plus active/inactive windows; a typical entry reads
``{'computation': 162.0, 'communication': 5648.1}`` for its reference models. The trace files
are not available here, so `make_fleet` draws the same fields from documented distributions
(`FleetSpec`), scaled to this project's small MoE (a few ms per sample instead of ~100).

Round time (as FedScale's completion time: compute + communication)::

    compute  = samples · epochs · ms_per_sample · cost(m) / 1000
    cost(m)  = 1 + expert_cost · (m - 1)            m = experts trained (m >= 1)
    transfer = 8 · (download + upload bytes) / (1000 · kbit/s)
    bytes    = bytes(shared) + Σ bytes(expert-e), each way

``compute_ms_per_sample`` is the time of one training sample (forward + backward) through the
shared part and *one* expert. Each further expert adds `expert_cost` of that: training runs every
assigned expert densely, and by multiply-accumulate count one expert of the default config is
about 0.64 of (encoder + head + one expert + its gate row), hence the default 0.6.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moe.parts import SHARED, expert_index, expert_part_id
from moe.profiles import DEFAULT_MEMORY_THRESHOLDS_MB, capacity_from_memory

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class DeviceCapability:
    """One device's hardware and behaviour (FedScale trace schema, plus memory and battery).

    Attributes:
        device_id: index in the fleet.
        compute_ms_per_sample: training time per sample, shared part + one expert (FedScale
            ``computation``).
        bandwidth_kbps: link bandwidth, both directions (FedScale ``communication``).
        memory_mb: memory budget for training.
        capacity: k_c ∈ {1, 2, 3}, experts the device can hold and train (from `memory_mb`).
        battery: charge in [0, 1].
        availability: mean probability of being online in a round.
        phase: position in its daily cycle, [0, 1) (drives active/inactive windows).
    """

    device_id: int
    compute_ms_per_sample: float
    bandwidth_kbps: float
    memory_mb: float
    capacity: int
    battery: float
    availability: float
    phase: float


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """The distributions `make_fleet` draws from (defaults are the documented fleet).

    Attributes:
        compute_median_ms: median ms/sample; lognormal, σ = `compute_sigma` (0.6: the middle
            90% spans ~0.37×–2.7× the median, ~1.5–11 ms).
        compute_sigma: log-space spread of compute.
        compute_range_ms: clip range of compute.
        bandwidth_median_kbps: median link rate, 4 Mbit/s; lognormal, σ = 0.8 (middle 90%
            ~1.1–15 Mbit/s: 3G-like to Wi-Fi-like links, a wide spread as in FedScale's trace).
        bandwidth_sigma: log-space spread of bandwidth.
        bandwidth_range_kbps: clip range of bandwidth.
        memory_median_mb: median memory budget; lognormal, σ = `memory_sigma`.
        memory_sigma: log-space spread of memory.
        memory_range_mb: clip range of memory.
        capacity_thresholds_mb: memory below the first → k_c = 1, below the second → 2, else
            3. With the defaults P(k_c = 1, 2, 3) ≈ 0.32, 0.43, 0.25.
        battery_range: battery ~ Uniform(range).
        availability_beta: availability ~ Beta(a, b), mean a/(a+b) = 1/3 by default, clipped to
            `availability_range`: about a third of the fleet is online in a round.
        availability_range: clip range of availability.
    """

    compute_median_ms: float = 4.0
    compute_sigma: float = 0.6
    compute_range_ms: tuple[float, float] = (0.5, 50.0)
    bandwidth_median_kbps: float = 4000.0
    bandwidth_sigma: float = 0.8
    bandwidth_range_kbps: tuple[float, float] = (100.0, 200_000.0)
    memory_median_mb: float = 2048.0
    memory_sigma: float = 0.6
    memory_range_mb: tuple[float, float] = (256.0, 16384.0)
    capacity_thresholds_mb: tuple[float, ...] = DEFAULT_MEMORY_THRESHOLDS_MB
    battery_range: tuple[float, float] = (0.1, 1.0)
    availability_beta: tuple[float, float] = (2.0, 4.0)
    availability_range: tuple[float, float] = (0.05, 0.95)


# Relative compute of each expert beyond the first (see the module docstring).
DEFAULT_EXPERT_COST = 0.6

# The simulated round deadline in seconds for the default setting: `make_regime("fleet", 30)`
# device data (10–170 samples, median ~33), 2 local epochs, this fleet, the default model's raw
# part sizes (shared 19,240 B, expert 33,540 B). Measured over 20 seeds × 30 devices: 26% of
# devices cannot train all their k_c experts in time (33% of those with k_c >= 2), 91% can
# train at least one. tests/unit/moe/test_fleet.py checks these shares stay in range.
DEFAULT_DEADLINE_S = 1.5


def make_fleet(
    num_devices: int, seed: int, spec: FleetSpec = FleetSpec()
) -> list[DeviceCapability]:
    """Draw `num_devices` device capabilities from `spec` with `seed` (see `FleetSpec`).

    Each field comes from its own child stream of ``SeedSequence(seed)``, so changing one
    distribution leaves the others' draws unchanged.
    """
    if num_devices < 0:
        raise ValueError("num_devices must be >= 0")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    comp_rng, bw_rng, mem_rng, bat_rng, avail_rng, phase_rng = streams

    def lognormal(
        rng: np.random.Generator, median: float, sigma: float, bounds: tuple[float, float]
    ) -> NDArray[np.float64]:
        draws = rng.lognormal(math.log(median), sigma, size=num_devices)
        out: NDArray[np.float64] = np.clip(draws, *bounds)
        return out

    compute = lognormal(comp_rng, spec.compute_median_ms, spec.compute_sigma, spec.compute_range_ms)
    bandwidth = lognormal(
        bw_rng, spec.bandwidth_median_kbps, spec.bandwidth_sigma, spec.bandwidth_range_kbps
    )
    memory = lognormal(mem_rng, spec.memory_median_mb, spec.memory_sigma, spec.memory_range_mb)
    battery = bat_rng.uniform(*spec.battery_range, size=num_devices)
    avail = np.clip(
        avail_rng.beta(*spec.availability_beta, size=num_devices), *spec.availability_range
    )
    phase = phase_rng.uniform(0.0, 1.0, size=num_devices)
    return [
        DeviceCapability(
            device_id=i,
            compute_ms_per_sample=float(compute[i]),
            bandwidth_kbps=float(bandwidth[i]),
            memory_mb=float(memory[i]),
            capacity=capacity_from_memory(float(memory[i]), spec.capacity_thresholds_mb),
            battery=float(battery[i]),
            availability=float(avail[i]),
            phase=float(phase[i]),
        )
        for i in range(num_devices)
    ]


def online_probability(
    capability: DeviceCapability,
    round_: int,
    *,
    diurnal_amplitude: float = 0.5,
    period_rounds: int = 24,
) -> float:
    """P(online in `round_`): availability modulated by a daily cycle (active/inactive windows).

    ``p = clip(availability · (1 + A · sin(2π (round / period + phase))), 0, 1)``; over a whole
    period it averages to `availability` (up to the clip). A = 0 gives i.i.d. rounds.
    """
    angle = 2 * math.pi * (round_ / period_rounds + capability.phase)
    p = capability.availability * (1 + diurnal_amplitude * math.sin(angle))
    return min(1.0, max(0.0, p))


def online_devices(
    fleet: Sequence[DeviceCapability],
    round_: int,
    rng: np.random.Generator,
    *,
    diurnal_amplitude: float = 0.5,
    period_rounds: int = 24,
) -> IntArray:
    """Indices (into `fleet`, ascending) of the devices online in `round_`.

    Each device is online independently with `online_probability`; `rng` is the only
    randomness (one uniform draw per device).
    """
    p = np.array(
        [
            online_probability(
                c, round_, diurnal_amplitude=diurnal_amplitude, period_rounds=period_rounds
            )
            for c in fleet
        ]
    )
    draws = rng.random(len(fleet))
    out: IntArray = np.flatnonzero(draws < p).astype(np.int64)
    return out


def compute_cost_factor(num_experts: int, expert_cost: float = DEFAULT_EXPERT_COST) -> float:
    """cost(m) = 1 + expert_cost · (m - 1) for m >= 1 experts; 1 for m = 0 (shared only)."""
    return 1.0 + expert_cost * max(num_experts - 1, 0)


def round_seconds(
    compute_ms_per_sample: ArrayLike,
    bandwidth_kbps: ArrayLike,
    num_samples: ArrayLike,
    epochs: float,
    num_experts: ArrayLike,
    bytes_each_way: ArrayLike,
    *,
    expert_cost: float = DEFAULT_EXPERT_COST,
) -> FloatArray:
    """THE round-time formula (module docstring), element-wise over broadcast arrays.

    Every round time in the project comes from here: what a simulated device takes
    (`round_time_s`, hence `moe.scenario.Scenario.round_time_s` and the devices of `clients/`),
    and what the matcher predicts (`max_experts_in_time`, behind
    `moe.matching.fitness.deadline_capacity`), so prediction and charge cannot drift apart.

    Args:
        compute_ms_per_sample: ms per training sample through the shared part and one expert.
        bandwidth_kbps: link rate, kbit/s, both directions.
        num_samples: local samples.
        epochs: local epochs.
        num_experts: experts trained, m (m = 0 costs like m = 1: the shared part alone).
        bytes_each_way: bytes downloaded, and again uploaded.
        expert_cost: relative compute per expert beyond the first.
    """
    m = np.maximum(np.asarray(num_experts, dtype=np.float64) - 1.0, 0.0)
    cost = 1.0 + expert_cost * m
    ms = np.asarray(compute_ms_per_sample, dtype=np.float64)
    n = np.asarray(num_samples, dtype=np.float64)
    compute = n * epochs * ms * cost / 1000.0
    moved = np.asarray(bytes_each_way, dtype=np.float64)
    transfer = 2 * 8 * moved / (1000.0 * np.asarray(bandwidth_kbps, dtype=np.float64))
    out: FloatArray = np.asarray(compute + transfer, dtype=np.float64)
    return out


def round_time_s(
    capability: DeviceCapability,
    num_samples: int,
    epochs: int,
    experts_trained: Sequence[int],
    part_bytes: Mapping[str, int],
    *,
    expert_cost: float = DEFAULT_EXPERT_COST,
) -> float:
    """Simulated seconds for a device to download, train and upload its round's parts.

    Args:
        capability: the device.
        num_samples: local samples.
        epochs: local epochs.
        experts_trained: the experts it trains (their parts move both ways, with ``shared``).
        part_bytes: bytes of each part (``moe.parts.part_nbytes`` or serialized sizes).
        expert_cost: relative compute per expert beyond the first.

    Returns:
        compute + transfer seconds (`round_seconds`).
    """
    moved = part_bytes[SHARED] + sum(part_bytes[expert_part_id(e)] for e in experts_trained)
    return float(
        round_seconds(
            capability.compute_ms_per_sample,
            capability.bandwidth_kbps,
            num_samples,
            epochs,
            len(experts_trained),
            moved,
            expert_cost=expert_cost,
        )
    )


def max_experts_in_time(
    compute_ms_per_sample: ArrayLike,
    bandwidth_kbps: ArrayLike,
    num_samples: ArrayLike,
    epochs: float,
    *,
    shared_bytes: float,
    expert_bytes: float,
    deadline_s: float,
    max_experts: ArrayLike,
    expert_cost: float = DEFAULT_EXPERT_COST,
) -> IntArray:
    """Per device, the largest m ≤ max_experts with `round_seconds`(m experts) ≤ deadline_s;
    0 when even one expert does not fit.

    For m ≥ 1 the round time is affine in m (T(m) = T(1) + (m − 1)·ΔT), so m comes in closed
    form; it is then checked against `round_seconds` itself at m and m + 1, so the answer is
    exactly what `round_time_s` would charge (no rounding of the closed form can flip it).
    """
    ms = np.asarray(compute_ms_per_sample, dtype=np.float64)
    kbps = np.asarray(bandwidth_kbps, dtype=np.float64)
    n = np.asarray(num_samples, dtype=np.float64)
    cap = np.broadcast_to(np.asarray(max_experts, dtype=np.int64), np.broadcast(ms, kbps, n).shape)

    def time(m: IntArray) -> FloatArray:
        return round_seconds(
            ms, kbps, n, epochs, m, shared_bytes + m * expert_bytes, expert_cost=expert_cost
        )

    one = np.ones(cap.shape, dtype=np.int64)
    t1 = time(one)
    step = time(one + 1) - t1
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.where(step > 0, np.floor((deadline_s - t1) / step) + 1, cap)
    m = np.clip(np.nan_to_num(guess, nan=0.0, posinf=0.0, neginf=0.0), 0, cap).astype(np.int64)
    m = np.where(t1 > deadline_s, 0, m)
    # Exact correction against the formula itself (at most one step either way).
    over = (m > 0) & (time(np.maximum(m, 1)) > deadline_s)
    m = m - over
    under = (m < cap) & (time(m + 1) <= deadline_s)
    m = m + under
    out: IntArray = np.clip(m, 0, cap).astype(np.int64)
    return out


def deadline_capacity(
    capability: DeviceCapability,
    num_samples: int,
    epochs: int,
    part_bytes: Mapping[str, int],
    deadline_s: float = DEFAULT_DEADLINE_S,
    *,
    expert_cost: float = DEFAULT_EXPERT_COST,
) -> int:
    """The most experts (≤ k_c) the device can train and move within `deadline_s`; 0 if none.

    Expert parts are taken at the largest expert size in `part_bytes` (exact when, as here,
    all experts have the same layout; conservative otherwise). Monotone non-decreasing in
    `deadline_s`.
    """
    expert_sizes = [b for pid, b in part_bytes.items() if expert_index(pid) is not None]
    return int(
        max_experts_in_time(
            capability.compute_ms_per_sample,
            capability.bandwidth_kbps,
            num_samples,
            epochs,
            shared_bytes=part_bytes[SHARED],
            expert_bytes=max(expert_sizes, default=0),
            deadline_s=deadline_s,
            max_experts=capability.capacity,
            expert_cost=expert_cost,
        )
    )
