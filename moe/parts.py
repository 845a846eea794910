"""The part layout: how the model's weights split into independently aggregated parts.

Parts (the contract shared by devices, gateway and aggregator):

- ``shared``: the encoder and the head: ``encoder.weight`` (hidden, input_dim),
  ``encoder.bias`` (hidden,), ``head.weight`` (classes, hidden), ``head.bias`` (classes,).
- ``expert-e`` for e in 0..E-1: expert e's MLP and **row e of the gate**: ``fc1.weight``
  (expert_hidden, hidden), ``fc1.bias`` (expert_hidden,), ``fc2.weight`` (hidden, expert_hidden),
  ``fc2.bias`` (hidden,), ``gate.weight`` (hidden,), ``gate.bias`` (1,).

The gate row travels with its expert so that it is aggregated only over the devices that
trained that expert (with the sigmoid gate of `moe.model`, row e alone decides expert e's
weight, so averaging it in isolation is meaningful). All tensors are float32.

The flat "state" names (`split_state` / `join_parts`) are those of `moe.model.MoEModel`'s
``state_dict``: ``encoder.*``, ``gate.weight`` (E, hidden), ``gate.bias`` (E,),
``experts.{e}.fc1.*``, ``experts.{e}.fc2.*``, ``head.*``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray

from moe.errors import LayoutError
from moe.tensors import PartLayout, PartTensors, TensorSpec

if TYPE_CHECKING:  # model.py imports this module; only the type is needed here
    from moe.model import MoEConfig

SHARED = "shared"
EXPERT_PREFIX = "expert-"
SUPPORTED_LAYOUT_VERSIONS = frozenset({1})

_SHARED_NAMES = ("encoder.weight", "encoder.bias", "head.weight", "head.bias")
_EXPERT_NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
_EXPERT_STATE = re.compile(r"experts\.(\d+)\.(fc[12]\.(?:weight|bias))")
_EXPERT_PART = re.compile(r"expert-(0|[1-9]\d*)")

Float32Array = NDArray[np.float32]
Parts = dict[str, dict[str, Float32Array]]


def expert_part_id(expert: int) -> str:
    """The part id of expert `expert`, e.g. ``expert-3``."""
    return f"{EXPERT_PREFIX}{expert}"


def expert_index(part_id: str) -> int | None:
    """The expert index of an ``expert-e`` part id; None for ``shared``.

    Raises:
        LayoutError: `part_id` is neither ``shared`` nor ``expert-<int>``.
    """
    if part_id == SHARED:
        return None
    m = _EXPERT_PART.fullmatch(part_id)
    if m is None:
        raise LayoutError(f"unknown part id {part_id!r}")
    return int(m.group(1))


def part_ids(config: MoEConfig) -> tuple[str, ...]:
    """Every part id of the model: ``shared`` then ``expert-0`` … ``expert-{E-1}``."""
    return (SHARED, *(expert_part_id(e) for e in range(config.num_experts)))


def model_layout(config: MoEConfig) -> dict[str, PartLayout]:
    """The expected tensors of every part (names, shapes, float32) for `config`.

    Raises:
        LayoutError: `config.layout_version` is not one this code speaks.
    """
    if config.layout_version not in SUPPORTED_LAYOUT_VERSIONS:
        raise LayoutError(f"unsupported layout_version {config.layout_version}")
    c = config
    shared: PartLayout = {
        "encoder.weight": TensorSpec((c.hidden, c.input_dim)),
        "encoder.bias": TensorSpec((c.hidden,)),
        "head.weight": TensorSpec((c.num_classes, c.hidden)),
        "head.bias": TensorSpec((c.num_classes,)),
    }
    expert: PartLayout = {
        "fc1.weight": TensorSpec((c.expert_hidden, c.hidden)),
        "fc1.bias": TensorSpec((c.expert_hidden,)),
        "fc2.weight": TensorSpec((c.hidden, c.expert_hidden)),
        "fc2.bias": TensorSpec((c.hidden,)),
        "gate.weight": TensorSpec((c.hidden,)),
        "gate.bias": TensorSpec((1,)),
    }
    layout: dict[str, PartLayout] = {SHARED: shared}
    for e in range(c.num_experts):
        layout[expert_part_id(e)] = expert
    return layout


def part_nbytes(layout: Mapping[str, PartLayout]) -> dict[str, int]:
    """Raw tensor bytes of each part (no serialization overhead), e.g. for transfer times."""
    out: dict[str, int] = {}
    for pid, specs in layout.items():
        out[pid] = sum(
            int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize
            for s in specs.values()
        )
    return out


def check_part(
    part_id: str,
    tensors: Mapping[str, np.ndarray],
    layout: Mapping[str, PartLayout],
    *,
    require_finite: bool = False,
) -> None:
    """Check one part's tensors against the model layout.

    Args:
        part_id: the part the tensors claim to be.
        tensors: parameter name -> array.
        layout: the model layout (`model_layout`).
        require_finite: also reject NaN / inf values.

    Raises:
        LayoutError: unknown part, missing or unexpected tensor, wrong type, shape or dtype, or
            (with `require_finite`) non-finite values. The message names the problem.
    """
    specs = layout.get(part_id)
    if specs is None:
        raise LayoutError(f"unknown part {part_id!r}")
    missing = sorted(set(specs) - set(tensors))
    if missing:
        raise LayoutError(f"part {part_id!r}: missing tensors {missing}")
    extra = sorted(set(tensors) - set(specs))
    if extra:
        raise LayoutError(f"part {part_id!r}: unexpected tensors {extra}")
    for name, spec in specs.items():
        arr = tensors[name]
        if not isinstance(arr, np.ndarray):
            raise LayoutError(f"part {part_id!r}: {name} is {type(arr).__name__}, not ndarray")
        if tuple(arr.shape) != spec.shape:
            raise LayoutError(
                f"part {part_id!r}: {name} has shape {tuple(arr.shape)}, expected {spec.shape}"
            )
        if arr.dtype != np.dtype(spec.dtype):
            raise LayoutError(
                f"part {part_id!r}: {name} has dtype {arr.dtype}, expected {spec.dtype}"
            )
        if require_finite and not bool(np.isfinite(arr).all()):
            raise LayoutError(f"part {part_id!r}: {name} has non-finite values")


def check_parts(
    parts: Mapping[str, PartTensors],
    layout: Mapping[str, PartLayout],
    *,
    complete: bool = True,
) -> None:
    """`check_part` for every part; with `complete`, every part of the layout must be present.

    Raises:
        LayoutError: as `check_part`, or a missing part.
    """
    if complete:
        missing = sorted(set(layout) - set(parts))
        if missing:
            raise LayoutError(f"missing parts {missing}")
    for pid, tensors in parts.items():
        check_part(pid, tensors, layout)


def _to_numpy(value: object, name: str) -> Float32Array:
    if isinstance(value, torch.Tensor):
        arr: np.ndarray = value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
        arr = value
    else:
        raise LayoutError(f"{name} is {type(value).__name__}, not a tensor or ndarray")
    if arr.dtype != np.float32:
        raise LayoutError(f"{name} has dtype {arr.dtype}, expected float32")
    out: Float32Array = np.array(arr, dtype=np.float32, copy=True)
    return out


def split_state(state: Mapping[str, object] | torch.nn.Module) -> Parts:
    """Split flat model weights (a ``state_dict``, or a module) into parts.

    Args:
        state: flat name -> torch tensor or float32 ndarray, or a `MoEModel`.

    Returns:
        Part id -> parameter name -> float32 array (fresh copies).

    Raises:
        LayoutError: an unknown name, a missing gate, a gate/expert count mismatch or a
            non-float32 tensor.
    """
    flat: Mapping[str, object] = state.state_dict() if isinstance(state, torch.nn.Module) else state
    arrays = {name: _to_numpy(v, name) for name, v in flat.items()}
    for name in ("gate.weight", "gate.bias", *_SHARED_NAMES):
        if name not in arrays:
            raise LayoutError(f"state lacks {name}")
    gate_w, gate_b = arrays.pop("gate.weight"), arrays.pop("gate.bias")
    if gate_w.ndim != 2 or gate_b.shape != (gate_w.shape[0],):
        raise LayoutError(f"gate shapes {gate_w.shape} and {gate_b.shape} do not match")
    num_experts = gate_w.shape[0]
    parts: Parts = {SHARED: {n: arrays.pop(n) for n in _SHARED_NAMES}}
    for e in range(num_experts):
        parts[expert_part_id(e)] = {
            "gate.weight": gate_w[e].copy(),
            "gate.bias": gate_b[e : e + 1].copy(),
        }
    for name, arr in arrays.items():
        m = _EXPERT_STATE.fullmatch(name)
        if m is None:
            raise LayoutError(f"unknown state entry {name!r}")
        e = int(m.group(1))
        if e >= num_experts:
            raise LayoutError(f"{name!r}: expert {e} but the gate has {num_experts} rows")
        parts[expert_part_id(e)][m.group(2)] = arr
    for e in range(num_experts):
        got = parts[expert_part_id(e)]
        missing = [n for n in _EXPERT_NAMES if n not in got]
        if missing:
            raise LayoutError(f"expert {e} lacks {missing}")
    return parts


def join_parts(parts: Mapping[str, PartTensors]) -> dict[str, Float32Array]:
    """Inverse of `split_state`: flat ``state_dict`` names -> float32 arrays (fresh copies).

    Args:
        parts: ``shared`` and ``expert-0`` … ``expert-{E-1}`` (contiguous).

    Raises:
        LayoutError: a missing or unknown part or tensor.
    """
    if SHARED not in parts:
        raise LayoutError("parts lack 'shared'")
    experts = sorted(e for pid in parts if (e := expert_index(pid)) is not None)
    if experts != list(range(len(experts))) or not experts:
        raise LayoutError(f"expert parts must be expert-0..expert-(E-1), got {experts}")
    out: dict[str, Float32Array] = {}
    shared = parts[SHARED]
    for n in _SHARED_NAMES:
        if n not in shared:
            raise LayoutError(f"part 'shared' lacks {n}")
        out[n] = np.array(shared[n], dtype=np.float32, copy=True)
    gate_w, gate_b = [], []
    for e in experts:
        part = parts[expert_part_id(e)]
        for n in (*_EXPERT_NAMES, "gate.weight", "gate.bias"):
            if n not in part:
                raise LayoutError(f"part {expert_part_id(e)!r} lacks {n}")
        for n in _EXPERT_NAMES:
            out[f"experts.{e}.{n}"] = np.array(part[n], dtype=np.float32, copy=True)
        gate_w.append(part["gate.weight"])
        gate_b.append(part["gate.bias"].reshape(-1))
    out["gate.weight"] = np.stack(gate_w).astype(np.float32, copy=False)
    out["gate.bias"] = np.concatenate(gate_b).astype(np.float32, copy=False)
    return out
