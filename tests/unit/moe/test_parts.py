"""The part layout contract: ids, shapes, exact split/join, and named layout errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.errors import LayoutError
from moe.model import MoEConfig, MoEModel, init_weights
from moe.parts import (
    check_part,
    check_parts,
    expert_index,
    expert_part_id,
    join_parts,
    model_layout,
    part_ids,
    part_nbytes,
    split_state,
)


def test_part_ids_and_expert_indices() -> None:
    config = MoEConfig(num_experts=3)
    assert part_ids(config) == ("shared", "expert-0", "expert-1", "expert-2")
    assert expert_index("expert-12") == 12
    assert expert_index("shared") is None
    assert expert_part_id(4) == "expert-4"
    for bad in ("expert-", "expert-01", "expert--1", "Expert-1", "gate"):
        with pytest.raises(LayoutError, match="unknown part id"):
            expert_index(bad)


def test_layout_matches_the_torch_module() -> None:
    config = MoEConfig(input_dim=12, hidden=8, expert_hidden=5, num_experts=3, num_classes=4)
    layout = model_layout(config)
    parts = split_state(MoEModel(config))
    assert set(parts) == set(part_ids(config)) == set(layout)
    check_parts(parts, layout)
    assert layout["expert-1"]["gate.weight"].shape == (8,)
    assert layout["expert-1"]["gate.bias"].shape == (1,)
    assert all(spec.dtype == "float32" for p in layout.values() for spec in p.values())


def test_layout_is_versioned() -> None:
    with pytest.raises(LayoutError, match="layout_version"):
        model_layout(MoEConfig(layout_version=2))


def test_part_bytes_of_the_default_model() -> None:
    sizes = part_nbytes(model_layout(MoEConfig()))
    assert sizes["shared"] == 4 * (64 * 64 + 64 + 10 * 64 + 10)
    assert sizes["expert-0"] == 4 * (2 * 64 * 64 + 64 + 64 + 64 + 1)


def test_split_then_join_is_exact_both_ways() -> None:
    config = MoEConfig()
    parts = init_weights(config, 3)
    flat = join_parts(parts)
    again = split_state(flat)
    assert set(again) == set(parts)
    for pid in parts:
        assert set(again[pid]) == set(parts[pid])
        for name in parts[pid]:
            np.testing.assert_array_equal(again[pid][name], parts[pid][name])
            assert again[pid][name].dtype == np.float32
    flat2 = join_parts(again)
    assert set(flat2) == set(flat)
    for name in flat:
        np.testing.assert_array_equal(flat2[name], flat[name])
    # The gate rows travel with their experts.
    np.testing.assert_array_equal(flat["gate.weight"][5], parts["expert-5"]["gate.weight"])
    assert flat["gate.bias"][5] == parts["expert-5"]["gate.bias"][0]


def test_split_accepts_torch_tensors_and_never_aliases() -> None:
    config = MoEConfig(num_experts=2)
    flat = join_parts(init_weights(config, 0))
    tensors = {k: torch.from_numpy(v) for k, v in flat.items()}
    parts = split_state(tensors)
    parts["shared"]["encoder.weight"][...] = 0
    parts["expert-1"]["gate.bias"][...] = 0
    assert flat["encoder.weight"].any()
    assert flat["gate.bias"][1] != 0


def test_split_rejects_bad_states() -> None:
    flat = join_parts(init_weights(MoEConfig(num_experts=2), 0))
    with pytest.raises(LayoutError, match="unknown state entry"):
        split_state({**flat, "experts.0.fc3.weight": flat["experts.0.fc1.weight"]})
    with pytest.raises(LayoutError, match="expert 2 but the gate has 2 rows"):
        split_state({**flat, "experts.2.fc1.weight": flat["experts.0.fc1.weight"]})
    with pytest.raises(LayoutError, match="float32"):
        split_state({**flat, "head.bias": flat["head.bias"].astype(np.float64)})
    missing = dict(flat)
    del missing["experts.1.fc2.bias"]
    with pytest.raises(LayoutError, match="expert 1 lacks"):
        split_state(missing)


def test_join_rejects_gaps_and_missing_tensors() -> None:
    parts = init_weights(MoEConfig(num_experts=3), 0)
    gap = {k: v for k, v in parts.items() if k != "expert-1"}
    with pytest.raises(LayoutError, match=r"expert-0\.\.expert"):
        join_parts(gap)
    with pytest.raises(LayoutError, match="lack 'shared'"):
        join_parts({k: v for k, v in parts.items() if k != "shared"})
    broken = {**parts, "expert-2": {k: v for k, v in parts["expert-2"].items() if k != "fc1.bias"}}
    with pytest.raises(LayoutError, match=r"lacks fc1\.bias"):
        join_parts(broken)


def test_check_part_names_each_problem() -> None:
    config = MoEConfig()
    layout = model_layout(config)
    good = dict(init_weights(config, 0)["expert-3"])
    check_part("expert-3", good, layout)
    cases: list[tuple[str, dict[str, np.ndarray], str]] = [
        ("expert-9", good, "unknown part 'expert-9'"),
        ("expert-3", {k: v for k, v in good.items() if k != "fc2.bias"}, r"missing.*fc2\.bias"),
        ("expert-3", {**good, "extra": good["fc2.bias"]}, "unexpected.*extra"),
        ("expert-3", {**good, "fc1.bias": good["fc1.bias"][:3]}, r"fc1\.bias has shape \(3,\)"),
        ("expert-3", {**good, "gate.bias": good["gate.bias"].astype(np.float16)}, "float16"),
        ("shared", good, "missing"),
    ]
    for pid, tensors, message in cases:
        with pytest.raises(LayoutError, match=message):
            check_part(pid, tensors, layout)
    nan = {**good, "fc1.bias": np.full_like(good["fc1.bias"], np.nan)}
    check_part("expert-3", nan, layout)
    with pytest.raises(LayoutError, match="non-finite"):
        check_part("expert-3", nan, layout, require_finite=True)
    with pytest.raises(LayoutError, match="not ndarray"):
        check_part("expert-3", {**good, "fc1.bias": [0.0] * 64}, layout)  # type: ignore[dict-item]


def test_check_parts_wants_every_part_when_complete() -> None:
    config = MoEConfig(num_experts=2)
    parts = init_weights(config, 0)
    layout = model_layout(config)
    del parts["expert-1"]
    check_parts(parts, layout, complete=False)
    with pytest.raises(LayoutError, match="missing parts"):
        check_parts(parts, layout)
