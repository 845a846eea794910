"""Hostile updates are refused with the right reason code, before any state changes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from moe.aggregation.validation import (
    VALIDATION_REASONS,
    check_layout,
    check_tensors,
    layout_of,
    validate_update,
)
from moe.errors import LayoutError, UpdateRejected
from moe.tensors import TensorSpec

LAYOUT = {
    "fc1.weight": TensorSpec((4, 3)),
    "fc1.bias": TensorSpec((4,)),
    "gate.bias": TensorSpec((1,)),
}


def good() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(s.shape).astype(np.float32) for name, s in LAYOUT.items()}


def with_value(name: str, value: float) -> dict[str, Any]:
    tensors = good()
    tensors[name] = tensors[name].copy()
    tensors[name].flat[1 if tensors[name].size > 1 else 0] = value
    return tensors


def replaced(name: str, array: object) -> dict[str, Any]:
    tensors = good()
    tensors[name] = array
    return tensors


def without(name: str) -> dict[str, Any]:
    tensors = good()
    del tensors[name]
    return tensors


HOSTILE_TENSORS = [
    pytest.param(with_value("fc1.weight", np.nan), "non-finite", id="nan"),
    pytest.param(with_value("fc1.bias", np.inf), "non-finite", id="inf"),
    pytest.param(with_value("gate.bias", -np.inf), "non-finite", id="-inf"),
    pytest.param(replaced("fc1.weight", np.zeros((3, 4), np.float32)), "wrong-shape", id="shape"),
    pytest.param(replaced("fc1.bias", np.zeros((4, 1), np.float32)), "wrong-shape", id="rank"),
    pytest.param(replaced("fc1.bias", np.zeros(4, np.float64)), "wrong-dtype", id="float64"),
    pytest.param(replaced("fc1.bias", np.zeros(4, ">f4")), "wrong-dtype", id="big-endian"),
    pytest.param(replaced("fc1.bias", np.zeros(4, np.int32)), "wrong-dtype", id="int"),
    pytest.param(replaced("fc1.bias", [0.0] * 4), "wrong-type", id="list"),
    pytest.param(without("gate.bias"), "missing-tensor", id="missing"),
    pytest.param({**good(), "evil": np.zeros(1, np.float32)}, "extra-tensor", id="extra"),
    pytest.param({}, "missing-tensor", id="empty"),
    pytest.param([("fc1.bias", np.zeros(4, np.float32))], "wrong-type", id="not-mapping"),
]


@pytest.mark.parametrize(("tensors", "reason"), HOSTILE_TENSORS)
def test_hostile_tensors_are_rejected_with_their_reason(tensors: object, reason: str) -> None:
    with pytest.raises(UpdateRejected) as info:
        validate_update("expert-3", tensors, LAYOUT, 10.0)
    assert info.value.reason == reason
    assert reason in VALIDATION_REASONS
    assert "expert-3" in info.value.detail


@pytest.mark.parametrize(
    "weight",
    [-1.0, -1e-12, float("nan"), float("inf"), -float("inf"), True, "3", None, np.float64(-2)],
)
def test_bad_weights_are_rejected(weight: object) -> None:
    with pytest.raises(UpdateRejected) as info:
        validate_update("shared", good(), LAYOUT, weight)
    assert info.value.reason == "bad-weight"


@pytest.mark.parametrize("weight", [0, 0.0, 7, 12.5, np.int64(3), np.float32(2.5)])
def test_valid_weights_pass_and_come_back_as_float(weight: object) -> None:
    value = validate_update("shared", good(), LAYOUT, weight)
    assert isinstance(value, float)
    assert value == float(weight)  # type: ignore[arg-type]


def test_unknown_part_is_rejected() -> None:
    model_layout = {"shared": LAYOUT}
    with pytest.raises(UpdateRejected) as info:
        validate_update("expert-9", good(), model_layout.get("expert-9"), 1.0)
    assert info.value.reason == "unknown-part"


def test_structure_is_checked_before_values() -> None:
    # A NaN and a wrong shape: the cheap structural check must answer first.
    tensors = with_value("fc1.weight", np.nan)
    tensors["fc1.bias"] = np.zeros(5, np.float32)
    with pytest.raises(UpdateRejected) as info:
        check_tensors(tensors, LAYOUT)
    assert info.value.reason == "wrong-shape"


def test_detail_of_many_extra_names_is_capped() -> None:
    tensors = {**good(), **{f"x{i}": np.zeros(1, np.float32) for i in range(1000)}}
    with pytest.raises(UpdateRejected) as info:
        check_tensors(tensors, LAYOUT)
    assert info.value.reason == "extra-tensor"
    assert len(info.value.detail) < 200
    assert "995 more" in info.value.detail


def test_layout_of_describes_tensors_it_accepts() -> None:
    tensors = good()
    assert layout_of(tensors) == LAYOUT
    check_tensors(tensors, layout_of(tensors))
    # A non-native byte order keeps its explicit spelling, so it still mismatches native.
    assert layout_of({"b": np.zeros(2, ">f4")})["b"] != TensorSpec((2,))


def test_check_layout_raises_layout_error_for_trusted_inputs() -> None:
    check_layout(good(), LAYOUT)
    with pytest.raises(LayoutError, match="base"):
        check_layout(without("fc1.bias"), LAYOUT, "base")
