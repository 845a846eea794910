"""Per-part aggregation of client updates: streaming FedAvg and robust rules.

Each model part (`shared`, `expert-0`, ...) is aggregated on its own, only over the devices
that trained it. Layers, bottom up:

- `validation`: hostile-input checks of one update (`UpdateRejected` with a reason code).
- `base`: the `AggregationRule` / `PartAccumulator` interface (one part, one round).
- `fedavg`, `robust`: streaming weighted FedAvg (with norm clipping); coordinate median and
  trimmed mean (bounded buffers). `clipping`: `clipped-fedavg`, the default, FedAvg with a
  bound derived from the part's recent update norms. `registry.make_rule` builds them by name.
- `ledger`: the (round, device, part) dedup ledger, bounded by a window of rounds.
- `aggregator`: `PartAggregator`, composing the above across rounds for the service and the
  simulation, with verdicts and plain-data snapshots.
"""

from moe.aggregation.aggregator import (
    VERDICT_REASONS,
    PartAggregator,
    PartSnapshot,
    RoundResult,
    RoundStats,
    Verdict,
    VerdictStatus,
)
from moe.aggregation.base import AccumulatorState, AggregationRule, PartAccumulator
from moe.aggregation.clipping import ClippedFedAvg, NormHistory, clip_bound
from moe.aggregation.errors import RoundStateError, SnapshotError
from moe.aggregation.fedavg import FedAvg, FedAvgAccumulator
from moe.aggregation.ledger import LedgerStatus, UpdateKey, UpdateLedger
from moe.aggregation.registry import RULE_NAMES, make_rule, rule_from_plain, rule_to_plain
from moe.aggregation.robust import CoordinateMedian, TrimmedMean
from moe.aggregation.validation import VALIDATION_REASONS, validate_update

__all__ = [
    "RULE_NAMES",
    "VALIDATION_REASONS",
    "VERDICT_REASONS",
    "AccumulatorState",
    "AggregationRule",
    "ClippedFedAvg",
    "CoordinateMedian",
    "FedAvg",
    "FedAvgAccumulator",
    "LedgerStatus",
    "NormHistory",
    "PartAccumulator",
    "PartAggregator",
    "PartSnapshot",
    "RoundResult",
    "RoundStateError",
    "RoundStats",
    "SnapshotError",
    "TrimmedMean",
    "UpdateKey",
    "UpdateLedger",
    "Verdict",
    "VerdictStatus",
    "clip_bound",
    "make_rule",
    "rule_from_plain",
    "rule_to_plain",
    "validate_update",
]
