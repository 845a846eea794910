"""`ScenarioSettings` (`FEDMOE_SCENARIO_*`): the one scenario every process of a run shares.

The matcher (expert count, deadline), the aggregator (initial weights), the evaluator (test
set) and the fleet simulator (devices, data, capabilities) must agree on the scenario, so they
read it from the same settings; `fedmoe demo` and the compose file set it once for all.

The model size (`FEDMOE_SCENARIO_MODEL`, `moe.presets`) also fixes the defaults of the expert
count and the deadline: 0 in `experts` / `deadline_s` means the preset's (small: 8 experts,
1.5 s; large: 64, ~69 s), so ``--model large`` alone gives the large run and an explicit value
still wins. The fields keep what was given (0 stays 0, so `to_env` hands children the same
choice); `config()` is where they are resolved, and every reader goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from moe.data import REGIMES
from moe.presets import MODEL_NAMES, SMALL, model_preset
from moe.scenario import ScenarioConfig


@dataclass(frozen=True)
class ScenarioSettings:
    """What fixes the federated world of a run (see `moe.scenario.ScenarioConfig`)."""

    regime: str = setting("FEDMOE_SCENARIO_REGIME", "fleet", f"data regime, one of {REGIMES}")
    devices: int = setting("FEDMOE_SCENARIO_DEVICES", 30, "devices in the fleet (N)")
    model: str = setting(
        "FEDMOE_SCENARIO_MODEL", SMALL, f"model size, one of {MODEL_NAMES} (docs/experiment.md)"
    )
    experts: int = setting(
        "FEDMOE_SCENARIO_EXPERTS", 0, "experts in the model (E; 0: the model's, small 8, large 64)"
    )
    top_k: int = setting("FEDMOE_SCENARIO_TOP_K", 2, "experts each sample is routed to")
    seed: int = setting("FEDMOE_SCENARIO_SEED", 0, "seed of data split, fleet and weights")
    alpha: float = setting("FEDMOE_SCENARIO_ALPHA", 0.1, "Dirichlet concentration of labels")
    epochs: int = setting("FEDMOE_SCENARIO_EPOCHS", 2, "local epochs per round")
    deadline_s: float = setting(
        "FEDMOE_SCENARIO_DEADLINE_S",
        0.0,
        "round deadline in simulated seconds (device compute + transfer must fit it; 0: the "
        "model's, small 1.5, large ~69)",
    )
    static_devices: bool = setting(
        "FEDMOE_SCENARIO_STATIC_DEVICES",
        False,
        "devices are exactly their profiles every round (no jitter, stragglers, battery drain)",
    )
    time_scale: float = setting(
        "FEDMOE_SCENARIO_TIME_SCALE",
        1.0,
        "wall seconds per simulated second: the matcher's real deadline is deadline_s × this, "
        "and a simulated device takes its simulated round time × this",
    )

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise SettingsError("FEDMOE_SCENARIO_TIME_SCALE must be > 0")
        try:
            self.config()
        except ValueError as exc:
            raise SettingsError(f"FEDMOE_SCENARIO_*: {exc}") from exc

    def config(self) -> ScenarioConfig:
        """The domain scenario these settings describe."""
        if self.regime not in REGIMES:
            raise ValueError(f"regime {self.regime!r} is not one of {REGIMES}")
        preset = model_preset(self.model)
        return ScenarioConfig(
            regime=self.regime,
            num_devices=self.devices,
            num_experts=preset.experts(self.experts),
            top_k=self.top_k,
            seed=self.seed,
            alpha=self.alpha,
            epochs=self.epochs,
            deadline_s=preset.deadline(self.deadline_s),
            static_devices=self.static_devices,
            model=self.model,
        )

    @property
    def round_deadline_wall_s(self) -> float:
        """Wall seconds from assignment to the round deadline (the resolved one)."""
        return self.config().deadline_s * self.time_scale
