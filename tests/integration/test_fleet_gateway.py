"""Devices behind the real gateway, Kafka on the other side: the model and a RoundClosed
produced to Kafka reach the devices (the gateway forwards RoundClosed retained on
`{root}/round` and skips the other round events), their telemetry and status land on Kafka
`telemetry`, an assignment produced to Kafka yields the device's update split per part on
`updates`, and acks produced to Kafka end its resends."""

from __future__ import annotations

import dataclasses
import time

import pytest

from brokers.settings import BrokerSettings
from clients.fleet import Fleet
from moe.parts import SHARED, part_ids
from moe.scenario import build_scenario, device_id
from schemas import (
    Assignment,
    DeviceStatus,
    Message,
    PartClosed,
    PartUpdate,
    PartVersion,
    RoundClosed,
    Telemetry,
    UpdateAck,
    encode,
)
from schemas.messages import gate_row
from schemas.topics import Topic
from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings
from services.metrics import Outcome
from services.runtime import RuntimeSettings
from tests.integration.programs.harness import TopicCollector, produce
from tests.integration.test_fleet import SCENARIO, fleet_settings, running, until


@pytest.fixture
def broker(broker_env: BrokerSettings) -> BrokerSettings:
    """Kafka topics of the test's namespace, and an MQTT root of its own."""
    return dataclasses.replace(broker_env, mqtt_root=broker_env.namespace)


def _announced(messages: list[Message], device: str, round_: int) -> bool:
    return any(
        m.device_id == device
        and m.round == round_
        and (isinstance(m, Telemetry) or (isinstance(m, DeviceStatus) and not m.online))
        for m in messages
    )


@pytest.mark.timeout(90)
async def test_devices_train_behind_the_gateway(broker: BrokerSettings, namespace: str) -> None:
    table = broker.topic_table()
    scenario = build_scenario(SCENARIO.config())
    indices = range(2, 6)  # devices 3, 4, 5 are online in round 1, device 2 is not
    ids = [device_id(i) for i in indices]
    versions = dict.fromkeys(part_ids(scenario.model), 0)
    fleet = Fleet(broker, fleet_settings(namespace, first=2, count=4), SCENARIO, scenario=scenario)
    gateway_settings = GatewaySettings(client_id=f"gw-{namespace}", group_id="gw-egress")
    runtime = RuntimeSettings(poll_timeout_s=0.2, session_timeout_s=6.0, drain_timeout_s=10.0)
    now = time.time()
    model = [
        (part.encode(), encode(PartVersion(
            message_id=f"pv-{part}", device_id="aggregator", round=0, timestamp=now, part=part,
            version=0, layout_version=1, tensors=tensors,
        )))
        for part, tensors in scenario.initial_parts().items()
    ]  # fmt: skip
    part_closed = PartClosed(
        message_id="pc-0", device_id="aggregator", round=0, timestamp=now, part=SHARED,
        version=0, applied=0, reason="quorum",
    )  # fmt: skip
    gates = {p: row for p, t in scenario.initial_parts().items() if (row := gate_row(t))}
    round_closed = RoundClosed(
        message_id="rc-0", device_id="matcher", round=0, timestamp=now, reason="complete",
        parts_closed=len(versions), model_versions=versions, gates=gates,
    )  # fmt: skip
    async with (
        TopicCollector(broker, table.name(Topic.TELEMETRY)) as telemetry,
        TopicCollector(broker, table.name(Topic.UPDATES)) as updates,
        TopicCollector(broker, table.name(Topic.DEAD_LETTER)) as letters,
        Gateway(broker, gateway_settings, runtime) as gateway,
        running(fleet),
    ):
        await until(lambda: gateway.connected.is_set(), 30, "gateway connected")
        await produce(broker, table.name(Topic.MODEL), model)
        rounds = [(b"round", encode(part_closed)), (b"round", encode(round_closed))]
        await produce(broker, table.name(Topic.ROUNDS), rounds)
        await telemetry.wait_until(
            lambda ms: all(_announced(ms, d, 1) for d in ids), 40, "round 1 announcements"
        )
        reporting = {m.device_id for m in telemetry.messages if isinstance(m, Telemetry)}
        assert reporting == {device_id(i) for i in (3, 4, 5)}

        target = device_id(4)
        assignment = Assignment(
            message_id="as-4", device_id=target, round=1, timestamp=time.time(), experts=(1, 3),
            deadline=time.time() + 30, model_versions=versions,
        )  # fmt: skip
        await produce(
            broker, table.name(Topic.ASSIGNMENTS), [(target.encode(), encode(assignment))]
        )
        uid = f"up-{target}-r1"
        await updates.wait_until(
            lambda ms: (
                {m.payload.part for m in ms if isinstance(m, PartUpdate)}
                == {SHARED, "expert-1", "expert-3"}
            ),
            30,
            "the device's update, split per part",
        )
        parts = [m for m in updates.messages if isinstance(m, PartUpdate)]
        assert {m.update_id for m in parts} == {uid}
        assert {m.message_id for m in parts} >= {f"{uid}/{p}" for p in (SHARED, "expert-1")}
        acks = [
            (target.encode(), encode(UpdateAck(
                message_id=f"ack-{p}", device_id=target, round=1, timestamp=time.time(),
                update_id=uid, part=p, status="applied",
            )))
            for p in (SHARED, "expert-1", "expert-3")
        ]  # fmt: skip
        await produce(broker, table.name(Topic.ACKS), acks)
        agent = next(a for a in fleet.agents if a.device == target)
        await until(lambda: agent.pending_updates == 0, 30, "every part acknowledged")
        assert agent.stats.applied == {(uid, p) for p in (SHARED, "expert-1", "expert-3")}
        gateway.stop()
    metrics = gateway.metrics
    assert metrics.get(Outcome.SKIPPED) == 1  # the PartClosed: valid, not for devices
    assert metrics.get(Outcome.DEAD_LETTERED) == 0
    assert not letters.messages
    # Published to devices: every part, each expert's gate row alone (for devices of schema
    # 1.0; these take them from the round), the round, the assignment and the three acks.
    assert metrics.get(Outcome.PUBLISHED) == len(model) + (len(model) - 1) + 1 + 1 + 3
    stats = fleet.stats()["totals"]
    assert stats["updates_sent"] == 3
    assert stats["updates_acked"] == 3
    assert stats["events"]["telemetry_sent"] == 3
