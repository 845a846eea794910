"""Malicious devices for the robustness experiment: who attacks, and how an update is poisoned.

A malicious device behaves normally to the matcher (honest telemetry, so it is assigned like
any other) and trains like any other, then poisons what it uploads. Each attack is a pure
function of the part's base (the version the device trained from), its honest trained tensors
and a seeded generator, applied to every part of the upload; the weight (its sample counts)
stays honest, since the aggregator caps claimed weights anyway (`over-weight`).

| attack       | what the device sends, per part, with d = honest update − base                |
|--------------|-------------------------------------------------------------------------------|
| `sign-flip`  | base − d: the honest step reversed, at its honest size                        |
| `scale`      | base + 10·d: the honest step, ten times too large                             |
| `noise`      | base + n, n Gaussian in a random direction with ‖n‖ = 10·‖d‖                   |
| `label-flip` | an honest update trained on flipped labels (class c → C − 1 − c): data poison |

`scale` and `noise` attack through size, which norm clipping bounds; `sign-flip` and
`label-flip` send updates of honest size, which clipping cannot tell from honest ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from moe.errors import InvalidArgumentError
from moe.scenario import derived_seed

Attack = Literal["sign-flip", "scale", "noise", "label-flip"]
ATTACKS: tuple[Attack, ...] = get_args(Attack)

SCALE_FACTOR = 10.0  # `scale`: how much larger than honest the step is
NOISE_FACTOR = 10.0  # `noise`: the noise's norm, relative to the honest step's

# Purposes of derived seeds (the scenario's use 1-4): who attacks, and each noise draw.
_ATTACKERS, _NOISE = 101, 102

Tensors = Mapping[str, NDArray[np.floating]]


def choose_attackers(num_devices: int, fraction: float, seed: int) -> frozenset[int]:
    """Which device indices are malicious: `round(fraction × N)` of them, drawn with `seed`.

    Raises:
        InvalidArgumentError: for a fraction outside [0, 1).
    """
    if not (isinstance(fraction, int | float) and 0 <= fraction < 1):
        raise InvalidArgumentError(f"attacker fraction must be in [0, 1), got {fraction!r}")
    count = round(fraction * num_devices)
    rng = np.random.default_rng(derived_seed(seed, _ATTACKERS, 0))
    return frozenset(int(i) for i in rng.choice(num_devices, size=count, replace=False))


def flip_labels(y: NDArray[np.int64], num_classes: int) -> NDArray[np.int64]:
    """`label-flip`'s data: class c becomes C − 1 − c."""
    flipped: NDArray[np.int64] = (num_classes - 1 - y).astype(y.dtype, copy=False)
    return flipped


def poison_part(
    attack: Attack, base: Tensors, honest: Tensors, rng: np.random.Generator
) -> dict[str, NDArray[np.floating]]:
    """What a malicious device sends for one part (see the module docs).

    Args:
        attack: the attack; `label-flip` poisons the data, not the update, so it returns the
            honest tensors unchanged.
        base: the part's version the device trained from.
        honest: the tensors honest training produced (same names, shapes, dtypes as `base`).
        rng: the noise's generator (`noise` only).

    Returns:
        New arrays in each base tensor's dtype.
    """
    if attack not in ATTACKS:
        raise InvalidArgumentError(f"unknown attack {attack!r}; choose from {ATTACKS}")
    deltas = {k: np.subtract(honest[k], base[k], dtype=np.float64) for k in base}
    if attack == "label-flip":
        poisoned = deltas
    elif attack == "sign-flip":
        poisoned = {k: -d for k, d in deltas.items()}
    elif attack == "scale":
        poisoned = {k: SCALE_FACTOR * d for k, d in deltas.items()}
    else:
        noise = {k: rng.standard_normal(d.shape) for k, d in deltas.items()}
        honest_norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values()))
        noise_norm = math.sqrt(sum(float(np.vdot(n, n)) for n in noise.values()))
        scale = NOISE_FACTOR * honest_norm / noise_norm if noise_norm > 0 else 0.0
        poisoned = {k: scale * n for k, n in noise.items()}
    return {k: (base[k] + poisoned[k]).astype(base[k].dtype) for k in base}


@dataclass(frozen=True, slots=True)
class Adversary:
    """The malicious devices of one run and their attack.

    Attributes:
        attack: what every malicious device does.
        devices: their indices (`choose_attackers`).
        seed: the run's scenario seed (seeds the noise).
    """

    attack: Attack
    devices: frozenset[int]
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise InvalidArgumentError(f"unknown attack {self.attack!r}; choose from {ATTACKS}")

    def poisons_data(self, device: int) -> bool:
        """True when `device` trains on flipped labels."""
        return self.attack == "label-flip" and device in self.devices

    def poison(
        self, device: int, round_: int, part: str, base: Tensors, honest: Tensors
    ) -> dict[str, NDArray[np.floating]] | None:
        """The poisoned tensors `device` sends for `part` in `round_`, or None when honest."""
        if device not in self.devices or self.attack == "label-flip":
            return None
        # One generator per (round, device, part): every rule of a paired seed meets the same
        # noise, whatever order parts are poisoned in.
        entropy = [derived_seed(self.seed, _NOISE, round_, device), *part.encode()]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        return poison_part(self.attack, base, honest, rng)
