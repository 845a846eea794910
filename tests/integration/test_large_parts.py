"""A large model's parts over the real brokers, in chunks: an expert of 2.1M parameters (8.5 MB,
more than one message) goes from the aggregator to Kafka and through the gateway to a device
as chunks; the device trains it and uploads its update in chunks; the gateway forwards them
keyed by part, the aggregator reassembles, applies and acknowledges it, and publishes the new
version, again in chunks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from brokers.settings import BrokerSettings
from clients.fleet import Fleet
from fedmoe.scenario import ScenarioSettings
from moe.parts import SHARED
from moe.scenario import build_scenario, device_id
from schemas import Assignment, Message, PartUpdate, PartVersion, RoundClosed, encode
from schemas.chunks import Reassembler
from schemas.limits import MAX_MESSAGE_BYTES
from schemas.messages import MessageChunk
from schemas.topics import Topic
from services.aggregator.app import build_handler, build_runtime
from services.aggregator.settings import AggregatorSettings
from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings
from services.metrics import Outcome
from services.runtime import RuntimeSettings
from tests.integration.programs.harness import TopicCollector, produce
from tests.integration.test_aggregator import markers
from tests.integration.test_fleet import fleet_settings, running, until

# Two experts of the large model's size; label skew, static devices, a fast clock.
SCENARIO = ScenarioSettings(
    regime="label-skew", devices=4, experts=2, model="large", seed=3, time_scale=0.01,
    static_devices=True,
)  # fmt: skip
TARGET = 2


@pytest.fixture
def broker(broker_env: BrokerSettings) -> BrokerSettings:
    return dataclasses.replace(broker_env, mqtt_root=broker_env.namespace)


def wholes(messages: Sequence[Message]) -> list[Message]:
    """The messages of a topic with chunked ones reassembled (in the order they completed)."""
    chunks = Reassembler()
    out: list[Message] = []
    try:
        for m in messages:
            if isinstance(m, MessageChunk):
                assembled = chunks.add(m, 0.0)
                if assembled is not None:
                    out.append(assembled.message)
            else:
                out.append(m)
    finally:
        chunks.close()
    return out


def versions_of(messages: Sequence[Message], part: str) -> dict[int, PartVersion]:
    return {m.version: m for m in wholes(messages) if isinstance(m, PartVersion) and m.part == part}


@pytest.mark.timeout(150)
async def test_a_large_expert_travels_and_aggregates_in_chunks(
    broker: BrokerSettings, namespace: str, tmp_path: Path
) -> None:
    table = broker.topic_table()
    scenario = build_scenario(SCENARIO.config())
    expert_bytes = sum(a.nbytes for a in scenario.initial_parts()["expert-0"].values())
    assert expert_bytes > MAX_MESSAGE_BYTES  # so it can only travel in chunks
    target = device_id(TARGET)
    fleet = Fleet(
        broker, fleet_settings(namespace, first=TARGET, count=1), SCENARIO, scenario=scenario
    )
    runtime = RuntimeSettings(poll_timeout_s=0.2, tick_interval_s=0.2, session_timeout_s=6.0)
    agg_settings = AggregatorSettings(
        checkpoint_dir=tmp_path, group_id=f"{namespace}-agg", grace_s=1.0
    )
    aggregator = build_runtime(
        build_handler(agg_settings, SCENARIO, broker), agg_settings, broker, runtime
    )
    gateway_settings = GatewaySettings(client_id=f"gw-{namespace}", group_id="gw-egress")
    now = time.time()
    parts = ("shared", "expert-0", "expert-1")
    versions = dict.fromkeys(parts, 0)
    async with (
        TopicCollector(broker, table.name(Topic.UPDATES)) as updates,
        TopicCollector(broker, table.name(Topic.MODEL)) as model,
        TopicCollector(broker, table.name(Topic.DEAD_LETTER)) as letters,
        aggregator,
        Gateway(broker, gateway_settings, runtime) as gateway,
        running(fleet),
    ):
        await until(lambda: gateway.connected.is_set(), 30, "gateway connected")
        deadline = time.time() + 90
        await produce(
            broker,
            table.name(Topic.UPDATES),
            [(k, v) for k, v, _ in markers(0, dict.fromkeys(parts, 0), now)]
            + [
                (k, v)
                for k, v, _ in markers(
                    1, {"shared": 1, "expert-0": 1, "expert-1": 0}, deadline, {target: 10_000}
                )
            ],
        )
        await model.wait_until(lambda ms: 0 in versions_of(ms, "expert-0"), 60, "v0")
        round_closed = RoundClosed(
            message_id="rc-0", device_id="matcher", round=0, timestamp=now, reason="complete",
            parts_closed=len(parts), model_versions=versions,
        )  # fmt: skip
        await produce(broker, table.name(Topic.ROUNDS), [(b"round", encode(round_closed))])
        assignment = Assignment(
            message_id="as-1", device_id=target, round=1, timestamp=time.time(), experts=(0,),
            deadline=deadline, model_versions=versions,
        )  # fmt: skip
        await produce(
            broker, table.name(Topic.ASSIGNMENTS), [(target.encode(), encode(assignment))]
        )
        agent = fleet.agents[0]
        await until(lambda: agent.pending_updates == 0 and agent.stats.applied, 90, "acks")
        await model.wait_until(lambda ms: 1 in versions_of(ms, "expert-0"), 30, "v1")
        gateway.stop()
    uid = f"up-{target}-r1"
    assert agent.stats.applied == {(uid, SHARED), (uid, "expert-0")}
    assert any(isinstance(m, MessageChunk) for m in updates.messages), "sent in chunks"
    sent = {m.payload.part: m for m in wholes(updates.messages) if isinstance(m, PartUpdate)}
    assert set(sent) == {SHARED, "expert-0"}
    v1 = versions_of(model.messages, "expert-0")[1]
    assert v1.contributors == 1
    for name, array in sent["expert-0"].payload.tensors.items():
        np.testing.assert_allclose(v1.tensors[name], array, rtol=1e-6, atol=1e-7, err_msg=name)
    assert not letters.messages
    assert gateway.metrics.get(Outcome.DEAD_LETTERED) == 0
