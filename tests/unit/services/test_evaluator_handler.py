"""The evaluator's handler: EvalMetrics per RoundClosed with the accuracy of evaluating those
parts directly, rounds scored before a restart never scored again, records folded once."""

from __future__ import annotations

import pytest

from brokers.rebuild import ReplayedRecord
from moe.parts import model_layout
from moe.scenario import ScenarioConfig, build_scenario
from moe.training import evaluate
from schemas import encode
from schemas.messages import EvalMetrics, Message, PartClosed, PartVersion, RoundClosed
from schemas.topics import Topic, TopicTable
from services.errors import InvalidPayload
from services.evaluator.app import held_out_scorer
from services.evaluator.book import EvaluationBook
from services.evaluator.handler import EvaluatorHandler
from services.handler import InboundRecord
from services.metrics import Outcome, ServiceMetrics

TABLE = TopicTable(namespace="t")
SCENARIO = build_scenario(ScenarioConfig(num_devices=4, num_experts=3, seed=2))
PARTS = tuple(SCENARIO.initial_parts())
OTHER = build_scenario(ScenarioConfig(num_devices=4, num_experts=3, seed=9)).initial_parts()


def version(part: str, v: int) -> PartVersion:
    weights = SCENARIO.initial_parts() if v == 0 else OTHER
    return PartVersion(
        message_id=f"{part}-v{v}",
        device_id="aggregator",
        round=v,
        timestamp=1.0,
        part=part,
        version=v,
        layout_version=1,
        tensors=weights[part],
    )


def closed(r: int, versions: dict[str, int]) -> RoundClosed:
    return RoundClosed(
        message_id=f"rc-{r}",
        device_id="matcher",
        round=r,
        timestamp=1.0,
        reason="parts-closed",
        parts_closed=len(versions),
        model_versions=versions,
    )


def inbound(topic: Topic, offset: int, message: Message, partition: int = 0) -> InboundRecord:
    return InboundRecord(TABLE.name(topic), partition, offset, None, message, encode(message))


def replayed(topic: Topic, offset: int, message: Message, partition: int = 0) -> ReplayedRecord:
    return ReplayedRecord(TABLE.name(topic), partition, offset, None, 1000, message)


def make_handler(metrics: ServiceMetrics | None = None) -> EvaluatorHandler:
    book = EvaluationBook(model_layout(SCENARIO.model))
    return EvaluatorHandler(
        book, held_out_scorer(SCENARIO), TABLE, metrics or ServiceMetrics("e"), now=lambda: 5.0
    )


async def test_metrics_equal_evaluating_the_named_parts_directly() -> None:
    handler = make_handler()
    # Round 1 names expert-1 at v1, the rest at v0; the RoundClosed comes first.
    versions = {**dict.fromkeys(PARTS, 0), "expert-1": 1}
    assert await handler.handle(inbound(Topic.ROUNDS, 0, closed(1, versions))) == []
    offset = 0
    out = []
    for part in PARTS:
        out += await handler.handle(inbound(Topic.MODEL, offset, version(part, 0)))
        offset += 1
    assert out == []  # expert-1 is held at v0, the round names v1
    (metric,) = await handler.handle(inbound(Topic.MODEL, offset, version("expert-1", 1)))
    assert metric.topic is Topic.METRICS
    assert metric.key == "metrics"
    msg = metric.message
    assert isinstance(msg, EvalMetrics)
    parts = {**SCENARIO.initial_parts(), "expert-1": OTHER["expert-1"]}
    acc, loss = evaluate(SCENARIO.model, parts, SCENARIO.data.test_x, SCENARIO.data.test_y)
    assert (msg.round, msg.device_id, msg.timestamp) == (1, "evaluator", 5.0)
    assert msg.accuracy == pytest.approx(acc, abs=1e-12)
    assert msg.loss == pytest.approx(loss, rel=1e-9)
    assert msg.model_versions == versions
    assert handler.scored == 1


async def test_restore_scores_waiting_rounds_once_and_never_scored_ones_again() -> None:
    initial = dict.fromkeys(PARTS, 0)
    done = EvalMetrics(
        message_id="eval-0",
        device_id="evaluator",
        round=0,
        timestamp=1.0,
        accuracy=0.5,
        loss=1.0,
        model_versions=initial,
    )
    history = [
        replayed(Topic.MODEL, i, version(p, 0)) for i, p in enumerate(PARTS)
    ]  # model first: the handler still folds the rounds before it
    history += [
        replayed(Topic.ROUNDS, 0, closed(0, initial)),
        replayed(Topic.ROUNDS, 1, closed(1, initial)),
        replayed(Topic.METRICS, 0, done),
    ]
    metrics = ServiceMetrics("e")
    handler = make_handler(metrics)
    assert handler.restore(history) == len(history)
    assert handler.book.waiting == [1]
    (metric,) = await handler.on_tick(6.0)
    assert metric.message.round == 1
    assert await handler.on_tick(7.0) == []
    # The group re-reads the same records: old news, nothing scored again.
    assert await handler.handle(inbound(Topic.ROUNDS, 1, closed(1, initial))) == []
    assert metrics.get(Outcome.SKIPPED) == 1


async def test_other_round_events_are_skipped_and_strangers_refused() -> None:
    metrics = ServiceMetrics("e")
    handler = make_handler(metrics)
    pc = PartClosed(
        message_id="pc",
        device_id="aggregator",
        round=0,
        timestamp=1.0,
        part="shared",
        version=0,
        applied=0,
        reason="quorum",
    )
    assert await handler.handle(inbound(Topic.ROUNDS, 0, pc)) == []
    assert metrics.get(Outcome.SKIPPED) == 1
    with pytest.raises(InvalidPayload):
        await handler.handle(inbound(Topic.MODEL, 0, pc))
    with pytest.raises(InvalidPayload):
        await handler.handle(inbound(Topic.ROUNDS, 1, version("shared", 0)))
