"""Named model sizes (`--model small|large`): experts, expert width and the deadline they need.

``small`` is the model every result so far was measured with (8 experts of 64 hidden units,
~8.4k parameters each). ``large`` is the issue's large-model case: 64 experts of 16,384 hidden
units, 2,113,665 parameters (8.45 MB of float32) per ``expert-e`` part, so a device moves
megabytes per expert and the round deadline, not compute, decides how many experts it trains.

A preset fixes the expert width (the part layout follows from it) and the defaults of the
expert count and of the round deadline; settings that give an explicit count or deadline win
(`ModelPreset.experts`, `ModelPreset.deadline`). Encoder, head, top-k and classes are the same
for every preset: only the experts grow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from moe.fleet import DEFAULT_DEADLINE_S, FleetSpec, round_seconds
from moe.model import MoEConfig
from moe.parts import SHARED, expert_part_id, model_layout, part_nbytes

SMALL, LARGE = "small", "large"
_LARGE_EXPERTS, _LARGE_EXPERT_HIDDEN = 64, 16384


@dataclass(frozen=True, slots=True)
class ModelPreset:
    """One named model size.

    Attributes:
        name: what ``--model`` / ``FEDMOE_SCENARIO_MODEL`` says.
        num_experts: E when the settings leave it at 0.
        expert_hidden: hidden width inside each expert MLP (`moe.model.MoEConfig`).
        deadline_s: the round deadline, simulated seconds, when the settings leave it at 0.
    """

    name: str
    num_experts: int
    expert_hidden: int
    deadline_s: float

    def __post_init__(self) -> None:
        if self.num_experts < 1 or self.expert_hidden < 1 or not self.deadline_s > 0:
            raise ValueError(f"model preset {self.name!r}: sizes and deadline must be > 0")

    def experts(self, requested: int) -> int:
        """E for a setting: `requested`, or this preset's count when it is 0."""
        if requested < 0:
            raise ValueError(f"experts must be >= 0 (0: the {self.name} model's), not {requested}")
        return requested or self.num_experts

    def deadline(self, requested: float) -> float:
        """The deadline for a setting: `requested`, or this preset's when it is 0."""
        if requested < 0:
            raise ValueError(f"deadline must be >= 0 (0: the {self.name} model's), not {requested}")
        return requested or self.deadline_s


def median_transfer_s(nbytes: float, spec: FleetSpec | None = None) -> float:
    """Simulated seconds to move `nbytes` down and up again on the median link of `spec` (the
    documented fleet when None): the transfer term of `moe.fleet.round_seconds`, no compute."""
    kbps = (spec if spec is not None else FleetSpec()).bandwidth_median_kbps
    return float(round_seconds(0.0, kbps, 0, 0, 1, nbytes))


def _large_deadline_s() -> float:
    sizes = part_nbytes(
        model_layout(MoEConfig(num_experts=1, top_k=1, expert_hidden=_LARGE_EXPERT_HIDDEN))
    )
    # 1.5 s compute budget + shared & 2 experts both ways at the median 4 Mbit/s (67.7 s) = 69.2 s
    return DEFAULT_DEADLINE_S + median_transfer_s(sizes[SHARED] + 2 * sizes[expert_part_id(0)])


MODEL_PRESETS: Mapping[str, ModelPreset] = MappingProxyType(
    {
        SMALL: ModelPreset(SMALL, 8, 64, DEFAULT_DEADLINE_S),
        LARGE: ModelPreset(LARGE, _LARGE_EXPERTS, _LARGE_EXPERT_HIDDEN, _large_deadline_s()),
    }
)
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_PRESETS)


def model_preset(name: str) -> ModelPreset:
    """The preset called `name`.

    Raises:
        ValueError: no preset has that name (the message lists those that exist).
    """
    preset = MODEL_PRESETS.get(name)
    if preset is None:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    return preset
