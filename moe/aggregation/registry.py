"""Aggregation rules by name, for settings and checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from moe.aggregation.base import AggregationRule, Plain
from moe.aggregation.clipping import ClippedFedAvg
from moe.aggregation.fedavg import FedAvg
from moe.aggregation.robust import CoordinateMedian, TrimmedMean
from moe.errors import InvalidArgumentError

# Read-only, so no caller can register into shared module state.
_RULES: Mapping[str, Callable[..., AggregationRule]] = MappingProxyType(
    {
        ClippedFedAvg.name: ClippedFedAvg,
        FedAvg.name: FedAvg,
        CoordinateMedian.name: CoordinateMedian,
        TrimmedMean.name: TrimmedMean,
    }
)

RULE_NAMES = frozenset(_RULES)


def make_rule(name: str, **kwargs: Any) -> AggregationRule:
    """Build a rule by name.

    Args:
        name: `clipped-fedavg`, `fedavg`, `median` or `trimmed-mean`.
        **kwargs: the rule's parameters (`multiplier`, `window`, `min_history`; `max_norm`;
            `max_updates`; `trim_ratio`, `max_updates`).

    Returns:
        The configured rule.

    Raises:
        InvalidArgumentError: for an unknown name, an unknown parameter or an invalid value.
    """
    factory = _RULES.get(name)
    if factory is None:
        raise InvalidArgumentError(
            f"unknown aggregation rule {name!r}; choose from {sorted(_RULES)}"
        )
    try:
        return factory(**kwargs)
    except TypeError as exc:
        # An unexpected keyword is a configuration mistake, reported like a bad value.
        raise InvalidArgumentError(f"aggregation rule {name!r}: {exc}") from None


def rule_to_plain(rule: AggregationRule) -> Plain:
    """`{"name": ..., "params": {...}}`, JSON-able; `rule_from_plain` rebuilds the rule."""
    return {"name": rule.name, "params": rule.params()}


def rule_from_plain(data: Mapping[str, Any]) -> AggregationRule:
    """Rebuild a rule from `rule_to_plain` output.

    Raises:
        InvalidArgumentError: when the data names no known rule or holds invalid parameters.
    """
    name, params = data.get("name"), data.get("params")
    if not isinstance(name, str) or not isinstance(params, Mapping):
        raise InvalidArgumentError(f"aggregation rule data {data!r}")
    return make_rule(name, **params)
