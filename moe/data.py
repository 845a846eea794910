"""Offline federated data: scikit-learn's bundled digits, label-skewed and type-transformed.

Two regimes (see docs/design.md §8):

- ``label-skew``: a Dirichlet(α) label split of the training set over identical devices (all of
  hardware type 0, the identity transform); the test set is the held-out digits as they are.
- ``fleet``: the same label split, but each device also has a hardware type t ∈ 0..D-1 and sees
  its inputs through that type's fixed pixel permutation (a different sensor layout). Types are
  dealt as a seeded shuffle of round-robin (0, 1, …, D-1, 0, …), so every type has ⌊N/D⌋ or
  ⌈N/D⌉ devices. The test set covers every type: **each** held-out digit appears once under
  **each** type's transform (D × n_test samples, `test_types` says which), so accuracy is
  averaged evenly over types without the noise of a random type draw.

Everything is derived from one seed through independent `numpy.random.SeedSequence` children
(test split, label split, type transforms, type assignment), so e.g. changing α does not change
the test split. Nothing is downloaded: `load_digits` ships inside scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_digits

Float32Array = NDArray[np.float32]
IntArray = NDArray[np.int64]
Regime = Literal["label-skew", "fleet"]
REGIMES: tuple[Regime, ...] = ("label-skew", "fleet")


def load_digits_arrays() -> tuple[Float32Array, IntArray]:
    """All 1,797 8×8 digits: features (n, 64) float32 in [0, 1] (pixel / 16), labels (n,)."""
    bunch = load_digits()
    x: Float32Array = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(
        np.float32
    )
    y: IntArray = np.asarray(bunch.target, dtype=np.int64)
    return x, y


def stratified_split(
    labels: IntArray, test_fraction: float, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """Seeded train/test index split keeping each class's share (round(fraction·count) per class).

    Returns:
        (train indices, test indices), each sorted.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    train: list[IntArray] = []
    test: list[IntArray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = round(test_fraction * idx.size)
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def dirichlet_label_split(
    labels: IntArray,
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int = 10,
) -> list[IntArray]:
    """Split sample indices over devices with Dirichlet(α) label proportions.

    For each class, a proportion vector p ~ Dir(α·1_N) over the N devices cuts that class's
    shuffled samples. Small α gives each device few classes (α = 0.1: mostly 1–2 classes).
    Devices left with fewer than `min_samples` then receive random samples taken one at a
    time from the currently largest device, so every device can train; this moves few samples
    and keeps the skew.

    Args:
        labels: (n,) class labels.
        num_devices: N.
        alpha: Dirichlet concentration, > 0.
        rng: the randomness.
        min_samples: the least samples any device ends with.

    Returns:
        N sorted index arrays into `labels`; together they hold every index exactly once.

    Raises:
        ValueError: bad arguments, or fewer than ``num_devices * min_samples`` samples.
    """
    n = int(labels.shape[0])
    if num_devices < 1 or alpha <= 0 or min_samples < 0:
        raise ValueError("need num_devices >= 1, alpha > 0, min_samples >= 0")
    if num_devices * min_samples > n:
        raise ValueError(f"{n} samples cannot give {num_devices} devices {min_samples} each")
    shards: list[list[int]] = [[] for _ in range(num_devices)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_devices, alpha))
        cuts = (np.cumsum(p)[:-1] * idx.size).astype(np.int64)
        for d, piece in enumerate(np.split(idx, cuts)):
            shards[d].extend(int(i) for i in piece)
    sizes = np.array([len(s) for s in shards])
    while sizes.min() < min_samples:
        small, large = int(sizes.argmin()), int(sizes.argmax())
        donor = shards[large]
        shards[small].append(donor.pop(int(rng.integers(len(donor)))))
        sizes[small] += 1
        sizes[large] -= 1
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


@dataclass(frozen=True, slots=True, eq=False)
class DeviceTypeTransform:
    """D hardware types, each a fixed pixel permutation of the inputs (type 0 = identity).

    Attributes:
        permutations: (D, input_dim) int64; row t maps output feature j to input feature
            ``permutations[t, j]``.
    """

    permutations: IntArray

    @classmethod
    def make(cls, num_types: int, input_dim: int, seed: int) -> DeviceTypeTransform:
        """Type 0 is the identity; types 1..D-1 are seeded random permutations."""
        if num_types < 1 or input_dim < 1:
            raise ValueError("need num_types >= 1 and input_dim >= 1")
        rng = np.random.default_rng(seed)
        perms = [np.arange(input_dim, dtype=np.int64)]
        perms += [rng.permutation(input_dim).astype(np.int64) for _ in range(num_types - 1)]
        return cls(np.stack(perms))

    @property
    def num_types(self) -> int:
        """D."""
        return int(self.permutations.shape[0])

    def apply_type(self, x: Float32Array, device_type: int) -> Float32Array:
        """`x` (n, input_dim) as a device of `device_type` sees it (a new array)."""
        if not 0 <= device_type < self.num_types:
            raise ValueError(f"device_type {device_type} outside 0..{self.num_types - 1}")
        out: Float32Array = x[:, self.permutations[device_type]]
        return out


@dataclass(frozen=True, slots=True, eq=False)
class DeviceData:
    """One device's local data, already in its type's input layout."""

    x: Float32Array
    y: IntArray
    device_type: int

    @property
    def num_samples(self) -> int:
        """Local sample count."""
        return int(self.y.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class FederatedData:
    """A regime's data: per-device training data and a held-out test set.

    Attributes:
        regime: ``label-skew`` or ``fleet``.
        devices: device i's data at index i.
        test_x: test inputs (in ``fleet``: every test digit under every type).
        test_y: test labels.
        test_types: hardware type of each test row.
        transform: the type transforms in use.
    """

    regime: Regime
    devices: tuple[DeviceData, ...]
    test_x: Float32Array
    test_y: IntArray
    test_types: IntArray
    transform: DeviceTypeTransform

    @property
    def num_devices(self) -> int:
        """N."""
        return len(self.devices)

    def pooled(self) -> tuple[Float32Array, IntArray]:
        """Every device's training data concatenated (the centralized reference's input)."""
        x = np.concatenate([d.x for d in self.devices]).astype(np.float32, copy=False)
        y = np.concatenate([d.y for d in self.devices]).astype(np.int64, copy=False)
        return x, y


def make_regime(
    regime: Regime,
    num_devices: int,
    seed: int,
    alpha: float = 0.1,
    num_types: int = 4,
    *,
    test_fraction: float = 0.25,
    min_samples: int = 10,
) -> FederatedData:
    """Build a regime's federated data from the digits (see the module docstring).

    Args:
        regime: ``label-skew`` (all devices type 0) or ``fleet`` (D types, transformed inputs
            and a test set covering every type).
        num_devices: N. Beyond ``n_train // min_samples`` devices (134 for the digits) the
            label split has that many distinct shards and device i holds shard i mod that.
        seed: fixes everything.
        alpha: Dirichlet concentration of the label split.
        num_types: D (``fleet`` only; ``label-skew`` uses one type).
        test_fraction: held-out share of the digits (stratified by class).
        min_samples: the least training samples any device gets.

    Returns:
        The devices' data and the test set.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; expected one of {REGIMES}")
    split_ss, label_ss, transform_ss, types_ss = np.random.SeedSequence(seed).spawn(4)
    x, y = load_digits_arrays()
    train, test = stratified_split(y, test_fraction, np.random.default_rng(split_ss))
    # A fleet larger than the data allows (soak tests with thousands of devices) reuses the
    # shards: device i holds shard i mod S, as many sensors of one site see the same scene.
    distinct = max(1, min(num_devices, train.size // max(min_samples, 1)))
    shards = dirichlet_label_split(
        y[train], distinct, alpha, np.random.default_rng(label_ss), min_samples
    )
    shards = [shards[i % distinct] for i in range(num_devices)]
    d = num_types if regime == "fleet" else 1
    transform = DeviceTypeTransform.make(
        d, x.shape[1], int(np.random.default_rng(transform_ss).integers(2**31))
    )
    types = np.random.default_rng(types_ss).permutation(np.arange(num_devices) % d)
    devices = tuple(
        DeviceData(
            x=transform.apply_type(x[train[s]], int(t)),
            y=y[train[s]],
            device_type=int(t),
        )
        for s, t in zip(shards, types, strict=True)
    )
    test_x = np.concatenate([transform.apply_type(x[test], t) for t in range(d)])
    test_y = np.tile(y[test], d)
    test_types = np.repeat(np.arange(d, dtype=np.int64), test.size)
    return FederatedData(regime, devices, test_x, test_y, test_types, transform)
