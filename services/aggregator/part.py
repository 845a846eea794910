"""One part as an aggregator instance holds it: the `PartAggregator`, the open round's terms
(deadline, quorum) from its round marker, and the input partition the part's records arrive on;
and its checkpoint as plain data (`CheckpointStore` writes it atomically)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from moe.aggregation import AggregationRule, PartAggregator, PartSnapshot, SnapshotError
from moe.errors import MoEError
from moe.tensors import PartLayout

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class RoundTerms:
    """What the round marker set for the part's open round.

    Attributes:
        deadline: unix wall time by which an update must have reached the gateway.
        expected: devices assigned to the part (the quorum); 0 closes at once.
    """

    deadline: float
    expected: int


class PartState:
    """A part's aggregator plus what the service needs around it.

    Args:
        aggregator: the part's aggregator (version, weights, ledger, open round).
        partition: the input partition its records arrive on (-1 while unknown).
        terms: the open round's terms; None between rounds.
    """

    def __init__(
        self, aggregator: PartAggregator, partition: int, terms: RoundTerms | None = None
    ) -> None:
        self.aggregator = aggregator
        self.partition = partition
        self.terms = terms

    @property
    def part_id(self) -> str:
        """The part this state is of."""
        return self.aggregator.part_id

    @property
    def open_round(self) -> int | None:
        """The round accepting updates, or None."""
        return self.aggregator.current_round

    def to_plain(self) -> dict[str, Any]:
        """Everything to continue exactly here, for `CheckpointStore.save`."""
        snapshot = self.aggregator.snapshot()
        terms = self.terms
        return {
            "format": _FORMAT,
            "part": self.part_id,
            "partition": self.partition,
            "deadline": terms.deadline if terms is not None else None,
            "expected": terms.expected if terms is not None else None,
            "aggregator": snapshot.state,
            "weights": dict(snapshot.weights),
            "accumulator": dict(snapshot.accumulator),
        }

    @classmethod
    def from_plain(
        cls, data: Mapping[str, Any], layout: PartLayout, rule: AggregationRule
    ) -> PartState:
        """Rebuild from `to_plain` output read back from a checkpoint.

        Raises:
            SnapshotError: when the data is malformed or does not fit `layout` or `rule` (a
                round open under another rule).
        """
        if data.get("format") != _FORMAT:
            raise SnapshotError(f"part checkpoint format {data.get('format')!r}")
        partition = data.get("partition")
        if not _is_int(partition):
            raise SnapshotError(f"part checkpoint partition {partition!r}")
        snapshot = PartSnapshot(
            dict(_mapping(data, "aggregator")),
            dict(_mapping(data, "weights")),
            dict(_mapping(data, "accumulator")),
        )
        saved_rule = snapshot.state.get("rule")
        continue_with: AggregationRule | None = rule
        if (
            snapshot.state.get("open_round") is not None
            and isinstance(saved_rule, Mapping)
            and saved_rule.get("name") != rule.name
        ):
            # The open round was started under another rule (changed across a restart): it
            # finishes under that one rather than being refused; new rounds take `rule`
            # from the next restore between rounds.
            continue_with = None
        try:
            aggregator = PartAggregator.restore(snapshot, layout, continue_with)
        except SnapshotError:
            raise
        except MoEError as exc:  # LayoutError: the weights do not fit the model
            raise SnapshotError(f"part checkpoint: {exc}") from exc
        if data.get("part") != aggregator.part_id:
            raise SnapshotError(f"checkpoint of {data.get('part')!r} holds {aggregator.part_id}")
        terms = None
        if aggregator.current_round is not None:
            deadline, expected = data.get("deadline"), data.get("expected")
            if not (_is_real(deadline) and _is_int(expected) and expected >= 0):
                raise SnapshotError(f"open round terms {deadline!r}, {expected!r}")
            terms = RoundTerms(float(deadline), expected)
        return cls(aggregator, partition, terms)


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise SnapshotError(f"part checkpoint {key!r} must be a map")
    return value


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
