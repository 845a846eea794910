"""The evaluator against a real Kafka API (Tansu): PartVersions and RoundClosed (either first)
→ one EvalMetrics per round with the accuracy of evaluating those parts directly; a restarted
evaluator scores the next round and none of the earlier ones again."""

from __future__ import annotations

import asyncio

import pytest

from brokers.settings import BrokerSettings
from fedmoe.scenario import ScenarioSettings
from moe.parts import Parts
from moe.scenario import build_scenario
from moe.training import evaluate
from schemas import encode
from schemas.messages import EvalMetrics, Message, PartVersion, RoundClosed
from schemas.topics import Topic
from services.evaluator.app import evaluator_service
from services.evaluator.settings import EvaluatorSettings
from services.runtime import RuntimeSettings
from tests.integration.programs.harness import TopicCollector, produce

SCENARIO = ScenarioSettings(devices=4, experts=3, seed=4)
RUNTIME = RuntimeSettings(
    tick_interval_s=0.2, poll_timeout_s=0.2, session_timeout_s=6.0, drain_timeout_s=10.0
)


def weights(v: int) -> Parts:
    """Version v of every part: the initial weights of a scenario seeded by v."""
    settings = SCENARIO if v == 0 else ScenarioSettings(devices=4, experts=3, seed=100 + v)
    return build_scenario(settings.config()).initial_parts()


def part_version(part: str, v: int) -> PartVersion:
    return PartVersion(
        message_id=f"{part}-v{v}",
        device_id="aggregator",
        round=v,
        timestamp=1.0,
        part=part,
        version=v,
        layout_version=1,
        tensors=weights(v)[part],
        contributors=1 if v else 0,
    )


def round_closed(r: int, versions: dict[str, int]) -> RoundClosed:
    return RoundClosed(
        message_id=f"round-closed-{r}",
        device_id="matcher",
        round=r,
        timestamp=1.0,
        reason="parts-closed",
        parts_closed=len(versions),
        model_versions=versions,
    )


def scored(messages: list[Message]) -> dict[int, EvalMetrics]:
    return {m.round: m for m in messages if isinstance(m, EvalMetrics)}


def expected(versions: dict[str, int]) -> tuple[float, float]:
    scenario = build_scenario(SCENARIO.config())
    parts = {p: weights(v)[p] for p, v in versions.items()}
    return evaluate(scenario.model, parts, scenario.data.test_x, scenario.data.test_y)


@pytest.mark.timeout(90)
async def test_one_metric_per_round_equal_to_direct_evaluation(broker_env: BrokerSettings) -> None:
    table = broker_env.topic_table()
    model, rounds = table.name(Topic.MODEL), table.name(Topic.ROUNDS)
    parts = list(build_scenario(SCENARIO.config()).initial_parts())
    settings = EvaluatorSettings(group_id=f"ev-{broker_env.namespace}")
    genesis = dict.fromkeys(parts, 0)
    round1 = {**genesis, "shared": 1, "expert-2": 1}
    round2 = {**round1, "expert-0": 2, "shared": 2}

    # Round 0: the model first, then its RoundClosed. Round 1: RoundClosed first.
    await produce(broker_env, model, [(p.encode(), encode(part_version(p, 0))) for p in parts])
    await produce(broker_env, rounds, [(b"round", encode(round_closed(0, genesis)))])
    await produce(broker_env, rounds, [(b"round", encode(round_closed(1, round1)))])
    async with TopicCollector(broker_env, table.name(Topic.METRICS)) as metrics:
        async with evaluator_service(settings, SCENARIO, broker_env, RUNTIME) as service:
            await metrics.wait_until(lambda ms: 0 in scored(ms), 30, "EvalMetrics(0)")
            await asyncio.sleep(0.5)
            assert 1 not in scored(metrics.messages), "round 1 scored before its versions"
            news = [(p.encode(), encode(part_version(p, 1))) for p in ("shared", "expert-2")]
            await produce(broker_env, model, news)
            await metrics.wait_until(lambda ms: 1 in scored(ms), 30, "EvalMetrics(1)")
            service.stop()
            await asyncio.wait_for(service.wait(), 20)
        # Restarted: replays metrics (0 and 1 are done), rounds and model; scores round 2 only.
        news = [(p.encode(), encode(part_version(p, 2))) for p in ("expert-0", "shared")]
        await produce(broker_env, model, news)
        await produce(broker_env, rounds, [(b"round", encode(round_closed(2, round2)))])
        async with evaluator_service(settings, SCENARIO, broker_env, RUNTIME) as service:
            await metrics.wait_until(lambda ms: 2 in scored(ms), 30, "EvalMetrics(2)")
            await asyncio.sleep(1.0)  # room for a wrong second metric to show up
            service.stop()
            await asyncio.wait_for(service.wait(), 20)
    assert [m.round for m in metrics.messages] == [0, 1, 2]
    assert metrics.keys == [b"metrics"] * 3
    for r, versions in ((0, genesis), (1, round1), (2, round2)):
        got = scored(metrics.messages)[r]
        acc, loss = expected(versions)
        assert got.device_id == "evaluator"
        assert got.model_versions == versions
        assert got.accuracy == pytest.approx(acc, abs=1e-12)
        assert got.loss == pytest.approx(loss, rel=1e-9)
    accuracies = [scored(metrics.messages)[r].accuracy for r in range(3)]
    print(f"\nevaluator: accuracies of rounds 0..2 = {accuracies}")
    assert len(set(accuracies)) > 1, "different models must score differently"
