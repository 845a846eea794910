"""`EvaluatorHandler`: the `EvaluationBook` bound to the runtime; scores with `moe.training`.

Inputs `model` (PartVersion) and `rounds` (RoundClosed; the other round events are skipped and
counted). At start the book is rebuilt from `metrics` (rounds already scored), `rounds` and
`model`, in that order, so the versions a waiting round needs are known before the model's
history streams by. After every record and on every tick, each round whose versions are all held
is scored once: `EvalMetrics(device_id="evaluator", round=r, ...)` to `metrics`, key "metrics".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

from brokers.rebuild import ReplayedRecord
from moe.tensors import PartTensors
from schemas.messages import EvalMetrics, Message, PartClosed, PartVersion, RoundClosed, RoundOpened
from schemas.topics import Topic, TopicTable
from services.errors import InvalidPayload
from services.evaluator.book import EvaluationBook
from services.handler import InboundRecord, Outbound
from services.metrics import Outcome, ServiceMetrics
from services.watermarks import Watermarks

log = logging.getLogger(__name__)

EVALUATOR_ID = "evaluator"
METRICS_KEY = "metrics"
INPUTS: tuple[Topic, ...] = (Topic.ROUNDS, Topic.MODEL)
REPLAYED: tuple[Topic, ...] = (Topic.METRICS, Topic.ROUNDS, Topic.MODEL)
# A loss too large for a float (a diverged model) is reported as this, not dropped.
_LOSS_CAP = 1e30

Scorer = Callable[[Mapping[str, PartTensors]], tuple[float, float]]
"""The global model's parts → (accuracy, loss) on the held-out set."""


class EvaluatorHandler:
    """Feeds the book, scores what is ready."""

    def __init__(
        self,
        book: EvaluationBook,
        scorer: Scorer,
        table: TopicTable,
        metrics: ServiceMetrics,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self._scorer = scorer
        self._metrics = metrics
        self._now = now
        self._rounds = table.name(Topic.ROUNDS)
        self._model = table.name(Topic.MODEL)
        self._scores = table.name(Topic.METRICS)
        self._order = {table.name(t): i for i, t in enumerate(REPLAYED)}
        self._watermarks = Watermarks()
        self.scored = 0

    def restore(self, records: Sequence[ReplayedRecord]) -> int:
        """Fold replayed history (no outputs); returns the records folded."""
        folded = 0
        ordered = sorted(records, key=lambda r: self._order.get(r.topic, len(self._order)))
        for rec in ordered:
            if self._watermarks.seen(rec.topic, rec.partition, rec.offset):
                continue
            self._watermarks.note(rec.topic, rec.partition, rec.offset)
            try:
                if self._fold(rec.topic, rec.message):
                    folded += 1
            except InvalidPayload as exc:
                log.warning(
                    "evaluator: replayed %s/%d@%d refused: %s",
                    rec.topic,
                    rec.partition,
                    rec.offset,
                    exc,
                )
        return folded

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        """Fold one record, then score every round now ready."""
        if self._watermarks.seen(record.topic, record.partition, record.offset):
            self._metrics.inc(Outcome.SKIPPED)  # folded from the replay already
            return []
        try:
            if not self._fold(record.topic, record.message):
                self._metrics.inc(Outcome.SKIPPED)
        finally:
            self._watermarks.note(record.topic, record.partition, record.offset)
        return self._score()

    async def on_tick(self, now: float) -> list[Outbound]:
        """Score what became ready without a record (e.g. right after the restore)."""
        return self._score()

    def _fold(self, topic: str, message: Message) -> bool:
        """Fold one message; False for a valid one the evaluator has no use for."""
        if topic == self._model and isinstance(message, PartVersion):
            self.book.on_part_version(message)
        elif topic == self._rounds and isinstance(message, RoundClosed):
            self.book.on_round_closed(message)
        elif topic == self._rounds and isinstance(message, RoundOpened | PartClosed):
            return False
        elif topic == self._scores and isinstance(message, EvalMetrics):
            self.book.on_metrics(message)
        else:
            raise InvalidPayload("unexpected-message", f"{type(message).__name__} on {topic}")
        return True

    def _score(self) -> list[Outbound]:
        taken = self.book.take_ready()
        for r, why in taken.dropped:
            log.warning("evaluator: round %d cannot be scored exactly (%s); skipped", r, why)
        outputs: list[Outbound] = []
        for ready in taken.ready:
            started = time.perf_counter()
            accuracy, loss = self._scorer(ready.parts)
            closed = ready.closed
            metrics = EvalMetrics(
                message_id=f"eval-{closed.round}",
                device_id=EVALUATOR_ID,
                round=closed.round,
                timestamp=self._now(),
                accuracy=min(max(accuracy, 0.0), 1.0),
                loss=loss if math.isfinite(loss) else _LOSS_CAP,
                model_versions=dict(closed.model_versions),
            )
            self.scored += 1
            log.info(
                "evaluator: round %d accuracy %.4f loss %.4f (%.1f ms)",
                closed.round,
                metrics.accuracy,
                metrics.loss,
                1000 * (time.perf_counter() - started),
            )
            outputs.append(Outbound(Topic.METRICS, METRICS_KEY, metrics))
        return outputs
