"""`AggregatorSettings` (`FEDMOE_AGGREGATOR_*`); scenario, broker and runtime knobs come from
their own classes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from moe.aggregation import RULE_NAMES, AggregationRule, make_rule
from moe.aggregation.clipping import DEFAULT_MULTIPLIER, DEFAULT_WINDOW
from moe.errors import InvalidArgumentError
from schemas.topics import valid_segment


@dataclass(frozen=True)
class AggregatorSettings:
    """One aggregator instance: where parts are checkpointed, when rounds close, which rule."""

    checkpoint_dir: Path = setting(
        "FEDMOE_AGGREGATOR_CHECKPOINT_DIR",
        Path(".fedmoe/checkpoints/aggregator"),
        "directory of the per-part checkpoints, shared by every aggregator instance of a "
        "deployment (files go under <dir>/<namespace>/)",
    )
    grace_s: float = setting(
        "FEDMOE_AGGREGATOR_GRACE_S",
        2.0,
        "a part still short of its quorum closes at round deadline + this, wall seconds",
    )
    rule: str = setting(
        "FEDMOE_AGGREGATOR_RULE",
        "clipped-fedavg",
        f"aggregation rule, one of {sorted(RULE_NAMES)} (fedavg: unclipped FedAvg)",
    )
    clip_multiplier: float = setting(
        "FEDMOE_AGGREGATOR_CLIP_MULTIPLIER",
        DEFAULT_MULTIPLIER,
        "clipped-fedavg: clip each update's delta at this many times the median norm of the "
        "part's recent updates",
    )
    clip_window: int = setting(
        "FEDMOE_AGGREGATOR_CLIP_WINDOW",
        DEFAULT_WINDOW,
        "clipped-fedavg: how many recent update norms of a part the bound is derived from",
    )
    max_norm: float = setting(
        "FEDMOE_AGGREGATOR_MAX_NORM",
        0.0,
        "fedavg: clip each update's delta to this L2 norm (0: no clipping)",
    )
    trim_ratio: float = setting(
        "FEDMOE_AGGREGATOR_TRIM_RATIO", 0.1, "trimmed-mean: fraction cut from each end"
    )
    max_updates: int = setting(
        "FEDMOE_AGGREGATOR_MAX_UPDATES",
        256,
        "median / trimmed-mean: most updates one part buffers in a round",
    )
    ledger_window: int = setting(
        "FEDMOE_AGGREGATOR_LEDGER_WINDOW",
        4,
        "rounds of applied-update keys remembered for dedup (older resends are answered late)",
    )
    group_id: str = setting(
        "FEDMOE_AGGREGATOR_GROUP_ID", "aggregator", "Kafka consumer group the instances share"
    )
    instance_id: str = setting(
        "FEDMOE_AGGREGATOR_INSTANCE_ID", "aggregator-1", "this instance's name in logs"
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise SettingsError("FEDMOE_AGGREGATOR_GRACE_S must be finite and >= 0")
        if not (math.isfinite(self.max_norm) and self.max_norm >= 0):
            raise SettingsError("FEDMOE_AGGREGATOR_MAX_NORM must be finite and >= 0")
        if self.ledger_window < 1:
            raise SettingsError("FEDMOE_AGGREGATOR_LEDGER_WINDOW must be >= 1")
        if not self.group_id:
            raise SettingsError("FEDMOE_AGGREGATOR_GROUP_ID must not be empty")
        if not valid_segment(self.instance_id):
            raise SettingsError(
                f"FEDMOE_AGGREGATOR_INSTANCE_ID: {self.instance_id!r} is not a valid id"
            )
        try:
            self.aggregation_rule()
        except InvalidArgumentError as exc:
            raise SettingsError(f"FEDMOE_AGGREGATOR_*: {exc}") from exc

    def aggregation_rule(self) -> AggregationRule:
        """The configured rule with its parameters (only those the rule takes).

        Raises:
            InvalidArgumentError: for a bad rule or parameter (`__post_init__` has already
                turned that into a `SettingsError`, so a constructed instance never raises).
        """
        if self.rule == "clipped-fedavg":
            return make_rule(
                "clipped-fedavg", multiplier=self.clip_multiplier, window=self.clip_window
            )
        if self.rule == "fedavg":
            return make_rule("fedavg", max_norm=self.max_norm or None)
        if self.rule == "median":
            return make_rule("median", max_updates=self.max_updates)
        if self.rule == "trimmed-mean":
            return make_rule(
                "trimmed-mean", trim_ratio=self.trim_ratio, max_updates=self.max_updates
            )
        return make_rule(self.rule)  # raises InvalidArgumentError naming the known rules

    def part_dir(self, namespace: str) -> Path:
        """Where this deployment's part checkpoints live (one namespace's Kafka state)."""
        return self.checkpoint_dir / namespace
