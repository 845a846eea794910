"""The blockwise fold kernels against the whole-array float64 formulas they replace."""

from __future__ import annotations

import numpy as np
import pytest

from moe.aggregation.kernels import (
    BLOCK_ELEMENTS,
    all_finite,
    fold_into_mean,
    squared_distance,
)

SIZES = [1, 7, BLOCK_ELEMENTS - 1, BLOCK_ELEMENTS, 2 * BLOCK_ELEMENTS + 5]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_fold_into_mean_matches_the_float64_formula(size: int, scale: float) -> None:
    rng = np.random.default_rng(size)
    base = rng.standard_normal(size).astype(np.float32).reshape(-1, 1)
    mean = rng.standard_normal(size).reshape(-1, 1)
    update = (base + rng.standard_normal(base.shape).astype(np.float32) * 1e-2).astype(np.float32)
    share = 0.3
    x = base.astype(np.float64) + scale * (update.astype(np.float64) - base)
    expected = (1 - share) * mean + share * x

    fold_into_mean(mean, update, share, base, scale)

    np.testing.assert_allclose(mean, expected, rtol=1e-14, atol=1e-15)


def test_a_scaled_update_needs_its_base() -> None:
    with pytest.raises(ValueError, match="base"):
        fold_into_mean(np.zeros(3), np.zeros(3, np.float32), 0.5, None, 0.5)


@pytest.mark.parametrize("size", SIZES)
def test_squared_distance_matches_float64(size: int) -> None:
    rng = np.random.default_rng(size)
    a = rng.standard_normal(size).astype(np.float32)
    b = rng.standard_normal(size).astype(np.float32)
    exact = float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    assert squared_distance(a, b) == pytest.approx(exact, rel=1e-6)
    assert squared_distance(a.astype(np.float64), b) == pytest.approx(exact, rel=1e-12)


def test_squared_distance_redoes_a_float32_overflow_in_float64() -> None:
    a = np.full(BLOCK_ELEMENTS + 1, 3e38, np.float32)
    b = -a
    assert squared_distance(a, b) == pytest.approx((6e38) ** 2 * a.size, rel=1e-6)


def test_squared_distance_propagates_non_finite() -> None:
    a = np.zeros(3 * BLOCK_ELEMENTS, np.float32)
    a[2 * BLOCK_ELEMENTS + 1] = np.nan
    assert np.isnan(squared_distance(a, np.zeros_like(a)))


def test_sizes_must_agree() -> None:
    with pytest.raises(ValueError, match="sizes differ"):
        squared_distance(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="sizes differ"):
        fold_into_mean(np.zeros(3), np.zeros(3, np.float32), 0.5, np.zeros(4, np.float32))


def test_fold_into_mean_refuses_a_non_contiguous_mean() -> None:
    mean = np.zeros((4, 4))[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        fold_into_mean(mean, np.zeros(8, np.float32), 0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_value(bad: float) -> None:
    a = np.ones(2 * BLOCK_ELEMENTS, np.float32)
    assert all_finite(a)
    a[BLOCK_ELEMENTS + 3] = bad
    assert not all_finite(a)


def test_all_finite_accepts_finite_values_whose_squares_overflow() -> None:
    a = np.full(10, 3e38, np.float32)
    assert all_finite(a)
    assert all_finite(np.arange(5))  # integers are always finite


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_a_float32_mean_folds_to_the_float64_formula_within_rounding(
    size: int, scale: float
) -> None:
    rng = np.random.default_rng(size)
    base = rng.standard_normal(size).astype(np.float32)
    mean = rng.standard_normal(size).astype(np.float32)
    update = base + rng.standard_normal(size).astype(np.float32) * np.float32(1e-2)
    x = base.astype(np.float64) + scale * (update.astype(np.float64) - base)
    expected = 0.7 * mean.astype(np.float64) + 0.3 * x

    fold_into_mean(mean, update, 0.3, base, scale)

    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize(("updates", "rms_ulp"), [(10, 2.0), (1000, 12.0)])
def test_a_float32_running_mean_stays_within_a_few_ulp_of_the_exact_mean(
    updates: int, rms_ulp: float
) -> None:
    """The float32 state's rounding, measured in ulp of the weights' scale (the module's
    claim): it grows like √n, and is far below what a round's training moves a weight."""
    rng = np.random.default_rng(7)
    base = (rng.standard_normal(4096) * 0.1).astype(np.float32)
    mean = np.zeros_like(base)
    exact = np.zeros(base.shape)
    total = 0.0
    for _ in range(updates):
        update = base + (rng.standard_normal(base.size) * 1e-3).astype(np.float32)
        weight = float(rng.integers(1, 100))
        total += weight
        fold_into_mean(mean, update, weight / total)
        exact += weight * update.astype(np.float64)
    exact /= total
    ulp = float(np.spacing(np.float32(np.sqrt(np.mean(exact**2)))))
    error = (mean.astype(np.float64) - exact) / ulp
    assert float(np.sqrt(np.mean(error**2))) < rms_ulp


def test_the_first_update_is_copied_exactly() -> None:
    update = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    mean = np.full_like(update, 123.0)
    fold_into_mean(mean, update, 1.0)
    assert np.array_equal(mean, update)


def test_read_only_and_byte_swapped_updates_fold_like_native_ones() -> None:
    """The codec's tensors are read-only views of the record (no warning, no write), and a
    device may send big-endian floats."""
    native = np.random.default_rng(4).standard_normal(BLOCK_ELEMENTS + 3).astype(np.float32)
    read_only = np.frombuffer(native.tobytes(), np.float32)
    swapped = native.astype(">f4")
    folded = []
    for update in (native, read_only, swapped):
        mean = np.ones_like(native)
        fold_into_mean(mean, update, 0.25)
        folded.append(mean)
    assert np.array_equal(folded[0], folded[1])
    assert np.array_equal(folded[0], folded[2])
