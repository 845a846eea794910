"""One federated scenario: data split, fleet, model shape, initial weights and every seed.

The in-process simulation (`moe.simulation`) and the bus (services + `clients/`) both build
their world from a `Scenario`, so for one `ScenarioConfig` they see the same devices, the same
data, the same initial weights, the same devices online in a round and the same local-training
seeds: parity between them is then a matter of timing only.

Seeds are derived, never drawn from a shared stream, so the answer for (round, device) does not
depend on what was asked before: `SeedSequence([seed, purpose, round, device])`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from moe.data import REGIMES, FederatedData, Regime, make_regime
from moe.dynamics import (
    STATIC,
    DynamicsSpec,
    RoundConditions,
    battery_at,
    drifted_availability,
    round_conditions,
)
from moe.fleet import DEFAULT_DEADLINE_S, DeviceCapability, FleetSpec, make_fleet, online_devices
from moe.fleet import round_time_s as fleet_round_time_s
from moe.model import MoEConfig, init_weights
from moe.parts import Parts, model_layout, part_nbytes
from moe.presets import SMALL, model_preset
from moe.profiles import TelemetryReading, capacity_from_memory
from moe.training import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, routing_histogram

IntArray = NDArray[np.int64]

# Purposes of derived seeds (the second word of every SeedSequence entropy).
_ONLINE, _TRAIN, _STRATEGY, _CONDITIONS = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    """Everything that fixes a scenario.

    Attributes:
        regime: ``fleet`` (the headline: device types, heterogeneous capabilities) or
            ``label-skew`` (identical devices).
        num_devices: N.
        num_experts: E.
        top_k: experts per sample.
        seed: fixes the split, the fleet, the initial weights and every per-round draw.
        alpha: Dirichlet concentration of the label split.
        num_types: hardware types D in ``fleet``.
        epochs: local epochs per round.
        batch_size: local mini-batch size.
        lr: local learning rate.
        deadline_s: seconds from assignment to the round deadline (simulated time).
        static_devices: every device is its profile in every round (no jitter, stragglers,
            battery drain or availability drift: `moe.dynamics.STATIC`); off by default,
            where devices vary around their profiles (`moe.dynamics.DynamicsSpec`).
        model: the model size preset (`moe.presets`): it fixes the experts' width. E and the
            deadline stay explicit here; the settings layers take their defaults from it.
    """

    regime: Regime = "fleet"
    num_devices: int = 30
    num_experts: int = 8
    top_k: int = 2
    seed: int = 0
    alpha: float = 0.1
    num_types: int = 4
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    deadline_s: float = DEFAULT_DEADLINE_S
    static_devices: bool = False
    model: str = SMALL

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; expected one of {REGIMES}")
        model_preset(self.model)  # raises on an unknown name
        if self.num_devices < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("num_devices, epochs and batch_size must be >= 1")
        if not (self.deadline_s > 0 and self.lr > 0):
            raise ValueError("deadline_s and lr must be > 0")


def device_id(index: int) -> str:
    """The wire id of device `index` (a valid MQTT/Kafka segment)."""
    return f"dev-{index:05d}"


def device_index(device: str) -> int | None:
    """Inverse of `device_id`; None for an id not of that form."""
    prefix, _, digits = device.partition("-")
    if prefix != "dev" or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)


def _identical_fleet(num_devices: int, spec: FleetSpec) -> list[DeviceCapability]:
    """`label-skew`'s fleet: every device has the fleet's median capabilities."""
    low, high = spec.availability_beta
    return [
        DeviceCapability(
            device_id=i,
            compute_ms_per_sample=spec.compute_median_ms,
            bandwidth_kbps=spec.bandwidth_median_kbps,
            memory_mb=spec.memory_median_mb,
            capacity=capacity_from_memory(spec.memory_median_mb, spec.capacity_thresholds_mb),
            battery=1.0,
            availability=low / (low + high),
            phase=0.0,
        )
        for i in range(num_devices)
    ]


def derived_seed(seed: int, purpose: int, round_: int, device: int = 0) -> int:
    """A 63-bit seed for one (purpose, round, device), independent of every other one."""
    state = np.random.SeedSequence([seed, purpose, round_, device]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class Scenario:
    """The world of one federated run (built by `build_scenario`; cheap to rebuild).

    Attributes:
        config: what fixed it.
        model: the MoE shape.
        data: per-device data and the held-out test set.
        fleet: device i's capabilities at index i.
    """

    def __init__(self, config: ScenarioConfig, spec: FleetSpec | None = None) -> None:
        spec = spec if spec is not None else FleetSpec()
        self.config = config
        self.dynamics = STATIC if config.static_devices else DynamicsSpec()
        self.model = MoEConfig(
            expert_hidden=model_preset(config.model).expert_hidden,
            num_experts=config.num_experts,
            top_k=config.top_k,
        )
        self.data: FederatedData = make_regime(
            config.regime, config.num_devices, config.seed, config.alpha, config.num_types
        )
        self.fleet: list[DeviceCapability] = (
            make_fleet(config.num_devices, config.seed, spec)
            if config.regime == "fleet"
            else _identical_fleet(config.num_devices, spec)
        )

    def initial_parts(self) -> Parts:
        """Version 0 of every part (a fresh copy each call)."""
        return init_weights(self.model, self.config.seed)

    @cached_property
    def part_bytes(self) -> dict[str, int]:
        """Raw tensor bytes of each part (the round-time model's transfer sizes)."""
        return part_nbytes(model_layout(self.model))

    def device_ids(self) -> list[str]:
        """Every device's wire id, by index."""
        return [device_id(i) for i in range(self.config.num_devices)]

    def online(self, round_: int) -> IntArray:
        """Indices of the devices online in `round_` (the same for every strategy)."""
        rng = np.random.default_rng(derived_seed(self.config.seed, _ONLINE, round_))
        spec = self.dynamics
        today = [
            replace(
                c,
                availability=(
                    drifted_availability(c, round_, spec)
                    if battery_at(c, round_, spec) >= spec.battery_offline
                    else 0.0
                ),
            )
            for c in self.fleet
        ]
        return online_devices(today, round_, rng, period_rounds=spec.period_rounds)

    def conditions(self, device: int, round_: int) -> RoundConditions:
        """What `device` really is in `round_` (`moe.dynamics`; the same for every strategy)."""
        seed = derived_seed(self.config.seed, _CONDITIONS, round_, device)
        return round_conditions(self.fleet[device], round_, seed, self.dynamics)

    def train_seed(self, round_: int, device: int) -> int:
        """The local-training seed of `device` in `round_`."""
        return derived_seed(self.config.seed, _TRAIN, round_, device)

    def strategy_rng(self, round_: int) -> np.random.Generator:
        """The matching strategy's randomness for `round_` (random baseline, tie breaks)."""
        return np.random.default_rng(derived_seed(self.config.seed, _STRATEGY, round_))

    def round_time_s(self, device: int, experts: Sequence[int], round_: int) -> float:
        """Simulated seconds for `device` to move and train `experts` (plus the shared part) in
        `round_`, at its real conditions of that round."""
        now = self.conditions(device, round_)
        return fleet_round_time_s(
            replace(
                self.fleet[device],
                compute_ms_per_sample=now.compute_ms_per_sample,
                bandwidth_kbps=now.bandwidth_kbps,
            ),
            self.data.devices[device].num_samples,
            self.config.epochs,
            experts,
            self.part_bytes,
        )

    def telemetry(self, device: int, parts: Parts, round_: int) -> TelemetryReading:
        """What `device` reports before `round_`: the step time and link rate it measured in
        the round before (its real conditions then: a measurement, not its true mean, and one
        round stale), its battery now, and its routing histogram under the global gate in
        `parts`."""
        cap = self.fleet[device]
        data = self.data.devices[device]
        hist = routing_histogram(self.model, parts, data.x)
        measured = self.conditions(device, round_ - 1)
        return TelemetryReading(
            device_id=device_id(device),
            device_type=data.device_type,
            compute_ms_per_sample=measured.compute_ms_per_sample,
            bandwidth_kbps=measured.bandwidth_kbps,
            memory_mb=cap.memory_mb,
            battery=self.conditions(device, round_).battery,
            num_samples=data.num_samples,
            routing_histogram=tuple(float(h) for h in hist),
        )


def build_scenario(config: ScenarioConfig, spec: FleetSpec | None = None) -> Scenario:
    """The scenario `config` fixes (deterministic: the same config gives the same world)."""
    return Scenario(config, spec)
