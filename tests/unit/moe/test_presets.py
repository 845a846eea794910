"""Model size presets: sizes, the large deadline's derivation, and how a scenario uses them."""

from __future__ import annotations

import numpy as np
import pytest

from moe.fleet import DEFAULT_DEADLINE_S, FleetSpec, round_seconds
from moe.model import MoEConfig
from moe.parts import SHARED, expert_part_id, model_layout, part_nbytes
from moe.presets import LARGE, MODEL_NAMES, MODEL_PRESETS, SMALL, median_transfer_s, model_preset
from moe.scenario import ScenarioConfig, build_scenario


def _expert_parameters(config: MoEConfig) -> int:
    """Parameters of one ``expert-e`` part (its MLP and its gate row)."""
    layout = model_layout(config)[expert_part_id(0)]
    return sum(int(np.prod(spec.shape)) for spec in layout.values())


def test_small_is_todays_model() -> None:
    small = model_preset(SMALL)
    today = MoEConfig()
    assert (small.num_experts, small.expert_hidden) == (today.num_experts, today.expert_hidden)
    assert small.deadline_s == DEFAULT_DEADLINE_S
    assert ScenarioConfig().model == SMALL
    assert build_scenario(ScenarioConfig(num_devices=2)).model == today


def test_large_has_at_least_64_experts_of_2m_parameters() -> None:
    large = model_preset(LARGE)
    assert large.num_experts >= 64
    config = MoEConfig(num_experts=large.num_experts, expert_hidden=large.expert_hidden)
    assert _expert_parameters(config) == 2_113_665 >= 2_000_000
    sizes = part_nbytes(model_layout(config))
    assert sizes[expert_part_id(0)] == 4 * 2_113_665
    assert sizes[SHARED] == part_nbytes(model_layout(MoEConfig()))[SHARED]  # only experts grow


def test_large_deadline_fits_two_experts_on_a_median_device() -> None:
    large, spec = model_preset(LARGE), FleetSpec()
    sizes = part_nbytes(model_layout(MoEConfig(num_experts=3, expert_hidden=large.expert_hidden)))

    def median_device_s(m: int) -> float:
        moved = sizes[SHARED] + m * sizes[expert_part_id(0)]
        # A median device: median compute and link, the fleet regime's median ~33 samples.
        return float(
            round_seconds(spec.compute_median_ms, spec.bandwidth_median_kbps, 33, 2, m, moved)
        )

    assert median_device_s(2) <= large.deadline_s < median_device_s(3)
    expected = DEFAULT_DEADLINE_S + median_transfer_s(sizes[SHARED] + 2 * sizes[expert_part_id(0)])
    assert large.deadline_s == pytest.approx(expected)


def test_zero_means_the_presets_and_explicit_values_win() -> None:
    large = model_preset(LARGE)
    assert (large.experts(0), large.experts(16)) == (64, 16)
    assert (large.deadline(0.0), large.deadline(20.0)) == (large.deadline_s, 20.0)
    with pytest.raises(ValueError, match="experts must be >= 0"):
        large.experts(-1)
    with pytest.raises(ValueError, match="deadline must be >= 0"):
        large.deadline(-1.0)


def test_unknown_model_is_a_clear_error() -> None:
    assert set(MODEL_NAMES) == set(MODEL_PRESETS) == {SMALL, LARGE}
    with pytest.raises(ValueError, match=r"unknown model 'huge'.*'small', 'large'"):
        model_preset("huge")
    with pytest.raises(ValueError, match="unknown model"):
        ScenarioConfig(model="huge")


def test_a_large_scenario_builds_the_wide_experts_without_weights() -> None:
    sc = build_scenario(ScenarioConfig(num_devices=4, num_experts=64, model=LARGE))
    assert (sc.model.num_experts, sc.model.expert_hidden) == (64, 16384)
    assert sc.part_bytes[expert_part_id(63)] == 8_454_660
    # Transfer dominates the round: one expert more costs ~34 s on a median link.
    assert sc.round_time_s(0, [0, 1], 1) > sc.round_time_s(0, [0], 1) + 5
