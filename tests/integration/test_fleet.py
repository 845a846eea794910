"""Simulated devices against real Mosquitto, with the test playing the gateway's MQTT side:
round announcements (telemetry / unavailable), one update per assignment with the right parts
and weights, resends with the same ids until acked, nothing after the ack, bad input counted,
and a dropped device whose last will appears, that comes back and gets what was queued."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiomqtt
import numpy as np
import pytest

from brokers.local import LocalBrokers
from brokers.mqtt import mqtt_client
from brokers.settings import BrokerSettings
from clients.fleet import Fleet
from clients.settings import FleetSettings
from clients.stats import Event
from fedmoe.scenario import ScenarioSettings
from moe.parts import SHARED, expert_part_id, part_ids
from moe.scenario import build_scenario, device_id
from schemas import (
    Assignment,
    DeviceStatus,
    Message,
    ModelUpdate,
    PartVersion,
    RoundClosed,
    Telemetry,
    UpdateAck,
    decode,
    encode,
)
from schemas.messages import gate_row
from schemas.topics import MqttTopic, Topic, TopicTable
from services.gateway.logic import route_outbound

# Seed 1 with 6 devices: devices 3, 4, 5 are online in round 1, 0, 1, 2 are not.
SCENARIO = ScenarioSettings(devices=6, experts=4, seed=1, time_scale=0.2)
RESEND_S = 1.0


@dataclasses.dataclass(frozen=True)
class Heard:
    topic: str
    message: Message
    raw: bytes
    at: float


class GatewaySide:
    """The gateway's MQTT side, played by the test: hears what devices publish, publishes what
    the gateway would (retained model parts and rounds, assignments, acks)."""

    def __init__(self, broker: BrokerSettings) -> None:
        self.broker = broker
        self.table: TopicTable = broker.topic_table()
        self.heard: list[Heard] = []
        self._changed = asyncio.Condition()
        # Every expert's gate row of the model published last: the matcher's round marker
        # carries them (`RoundClosed.gates`).
        self.gates: dict[str, dict[str, np.ndarray]] = {}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[GatewaySide]:
        client_id = f"gw-{self.broker.namespace}"
        async with mqtt_client(self.broker, client_id=client_id, persistent=False) as client:
            self._client = client
            for pattern in (MqttTopic.TELEMETRY, MqttTopic.STATUS, MqttTopic.UPDATE):
                await client.subscribe(self.table.mqtt(pattern), 1)
            reader = asyncio.create_task(self._read(client), name="test:gateway-side")
            try:
                yield self
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = bytes(message.payload)
            heard = Heard(message.topic.value, decode(payload), payload, time.monotonic())
            async with self._changed:
                self.heard.append(heard)
                self._changed.notify_all()

    async def publish(self, topic: str, message: Message, *, retain: bool = False) -> None:
        await self._client.publish(topic, encode(message), qos=1, retain=retain, timeout=10)

    async def model(self, parts: dict[str, dict[str, np.ndarray]], version: int) -> None:
        for part, tensors in parts.items():
            message = PartVersion(
                message_id=f"pv-{part}-{version}", device_id="aggregator", round=0,
                timestamp=time.time(), part=part, version=version, layout_version=1,
                tensors=tensors,
            )  # fmt: skip
            # Where the gateway puts it.
            publishes = route_outbound(self.table, self.table.name(Topic.MODEL), message)
            assert isinstance(publishes, list)
            for out in publishes:
                payload = encode(message) if out.payload is None else out.payload
                await self._client.publish(out.topic, payload, qos=1, retain=True, timeout=10)
            if row := gate_row(tensors):
                self.gates[part] = row

    async def round_closed(
        self,
        round_: int,
        versions: dict[str, int],
        gates: dict[str, dict[str, np.ndarray]] | None = None,
        *,
        last: bool = False,
    ) -> None:
        """The round marker, with `gates` (default: those of the model published last)."""
        message = RoundClosed(
            message_id=f"rc-{round_}", device_id="matcher", round=round_, timestamp=time.time(),
            reason="complete", parts_closed=len(versions), model_versions=versions,
            gates=self.gates if gates is None else gates, last=last,
        )  # fmt: skip
        await self.publish(self.table.mqtt(MqttTopic.ROUND), message, retain=True)

    async def ack(self, update: ModelUpdate, status: str = "applied") -> None:
        for part in update.parts:
            ack = UpdateAck(
                message_id=f"ack-{update.message_id}-{part.part}", device_id=update.device_id,
                round=update.round, timestamp=time.time(), update_id=update.message_id,
                part=part.part, status=status,
            )  # fmt: skip
            topic = self.table.mqtt(MqttTopic.ACK, device=update.device_id)
            await self.publish(topic, ack)

    def of(self, kind: type[Message], device: str | None = None) -> list[Heard]:
        return [
            h
            for h in self.heard
            if type(h.message) is kind and (device is None or h.message.device_id == device)
        ]

    async def wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            kinds = [(type(h.message).__name__, h.message.device_id) for h in self.heard[-20:]]
            raise AssertionError(f"timed out waiting for {what}; last heard {kinds}") from None


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition on in-process state (the agents' counters)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
def broker(local_brokers: LocalBrokers, namespace: str) -> BrokerSettings:
    """MQTT only (no Kafka topics needed); an MQTT root of the test's own."""
    return dataclasses.replace(local_brokers.broker_settings(namespace), mqtt_root=namespace)


def fleet_settings(namespace: str, **overrides: object) -> FleetSettings:
    base: dict[str, object] = {
        "client_prefix": f"{namespace}-",
        "resend_s": RESEND_S,
        "model_wait_s": 15.0,
    }
    base.update(overrides)
    return FleetSettings(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def running(fleet: Fleet) -> AsyncIterator[Fleet]:
    task = asyncio.create_task(fleet.run(), name="test:fleet")
    try:
        yield fleet
    finally:
        fleet.stop()
        await asyncio.wait_for(task, 30)


def statuses(side: GatewaySide, device: str) -> list[DeviceStatus]:
    out = [h.message for h in side.of(DeviceStatus, device)]
    return [m for m in out if isinstance(m, DeviceStatus)]


@pytest.mark.timeout(90)
async def test_devices_follow_the_round_protocol(broker: BrokerSettings, namespace: str) -> None:
    scenario = build_scenario(SCENARIO.config())
    online = {int(i) for i in scenario.online(1)}
    assert online == {3, 4, 5}, "the scenario this test was written for"
    fleet = Fleet(broker, fleet_settings(namespace), SCENARIO, scenario=scenario)
    ids = [device_id(i) for i in range(6)]
    side = GatewaySide(broker)
    table = broker.topic_table()
    async with side.running(), running(fleet):
        await side.wait(
            lambda: all(any(s.reason == "connected" for s in statuses(side, d)) for d in ids),
            20,
            "every device connected",
        )
        # The round is announced before the model: available devices must wait for it.
        versions = dict.fromkeys(part_ids(scenario.model), 0)
        initial = scenario.initial_parts()
        gates = {p: row for p, t in initial.items() if (row := gate_row(t))}
        await side.round_closed(0, versions, gates)
        await side.wait(
            lambda: all(
                any(s.round == 1 and s.reason == "unavailable" for s in statuses(side, ids[i]))
                for i in range(6)
                if i not in online
            ),
            10,
            "offline devices say they are unavailable",
        )
        assert not side.of(Telemetry), "telemetry before the model arrived"
        await side.model(initial, 0)
        await side.wait(
            lambda: {h.message.device_id for h in side.of(Telemetry)} == {ids[i] for i in online},
            15,
            "telemetry of round 1 from the available devices",
        )
        for heard in side.of(Telemetry):
            message = heard.message
            assert isinstance(message, Telemetry)
            index = int(message.device_id.rsplit("-", 1)[1])
            expected = scenario.telemetry(index, initial, 1)
            assert message.round == 1
            assert message.routing_histogram == pytest.approx(expected.routing_histogram)
            assert message.num_samples == expected.num_samples
            assert message.compute_ms_per_sample == expected.compute_ms_per_sample
            # Online since it connected: its telemetry alone announces it, no status again.
            assert [s.reason for s in statuses(side, message.device_id)] == ["connected"]

        # Bad input is counted and dropped; the device carries on.
        a, b = 3, 5
        agent_a = next(x for x in fleet.agents if x.index == a)
        garbage_topic = table.mqtt(MqttTopic.ASSIGNMENT, device=ids[a])
        await side._client.publish(garbage_topic, b"\x00not msgpack", qos=1)
        stray = Assignment(
            message_id="as-stray", device_id=ids[b], round=1, timestamp=time.time(),
            experts=(0,), deadline=time.time() + 30, model_versions=versions,
        )  # fmt: skip
        await side.publish(garbage_topic, stray)
        bad_part = PartVersion(
            message_id="pv-bad", device_id="aggregator", round=0, timestamp=time.time(),
            part=SHARED, version=9, layout_version=1,
            tensors={"fc1.weight": np.zeros((2, 2), dtype=np.float32)},
        )  # fmt: skip
        await side.publish(table.mqtt(MqttTopic.MODEL, part=SHARED), bad_part)  # not retained
        await until(
            lambda: sum(agent_a.stats.dropped_inputs.values()) >= 3, 10, "bad inputs counted"
        )
        assert agent_a.stats.dropped_inputs["undecodable"] == 1
        assert agent_a.stats.dropped_inputs["other_device"] == 1
        assert agent_a.stats.dropped_inputs["layout"] == 1

        # Assignments: A trains experts 0 and 2 and gets no ack at first; B trains expert 1.
        assignments = {
            a: Assignment(
                message_id="as-a", device_id=ids[a], round=1, timestamp=time.time(),
                experts=(0, 2), deadline=time.time() + 30, model_versions=versions,
            ),
            b: Assignment(
                message_id="as-b", device_id=ids[b], round=1, timestamp=time.time(),
                experts=(1,), deadline=time.time() + 30, model_versions=versions,
            ),
        }  # fmt: skip
        for i, assignment in assignments.items():
            await side.publish(table.mqtt(MqttTopic.ASSIGNMENT, device=ids[i]), assignment)

        await side.wait(lambda: len(side.of(ModelUpdate, ids[b])) >= 1, 15, "B's update")
        first_b = side.of(ModelUpdate, ids[b])[0].message
        assert isinstance(first_b, ModelUpdate)
        await side.ack(first_b)

        await side.wait(lambda: len(side.of(ModelUpdate, ids[a])) >= 2, 15, "A's resend")
        sends_a = side.of(ModelUpdate, ids[a])
        assert sends_a[1].at - sends_a[0].at >= RESEND_S * 0.9
        assert {h.message.message_id for h in sends_a} == {f"up-{ids[a]}-r1"}
        assert sends_a[0].raw == sends_a[1].raw, "a resend is the same update, byte for byte"
        update_a = sends_a[0].message
        assert isinstance(update_a, ModelUpdate)

        # The update is what train_local gives for this device, round and assignment.
        for i, update in ((a, update_a), (b, first_b)):
            assignment = assignments[i]
            result = fleet.world.train(i, assignment, initial)
            expected_parts = [SHARED, *(expert_part_id(e) for e in assignment.experts)]
            assert [p.part for p in update.parts] == expected_parts
            assert update.round == 1
            assert update.num_samples == scenario.data.devices[i].num_samples
            for payload in update.parts:
                assert payload.base_version == 0
                for name, array in result.parts[payload.part].items():
                    np.testing.assert_array_equal(payload.tensors[name], array)
                if payload.part == SHARED:
                    assert payload.weight == result.num_samples
                else:
                    expert = int(payload.part.split("-")[1])
                    assert payload.weight == result.expert_samples[expert]
                    assert payload.loss == pytest.approx(result.expert_loss.get(expert, 0.0))

        # After the ack (one part "late": every status is final), A stops resending.
        await side.ack(update_a, status="late")
        await until(lambda: agent_a.pending_updates == 0, 10, "A's update complete")
        resends = agent_a.stats.resends
        count = len(side.of(ModelUpdate, ids[a]))
        assert count == 1 + resends
        await asyncio.sleep(2.5 * RESEND_S)  # an observation window: nothing may come in it
        assert len(side.of(ModelUpdate, ids[a])) == count
        assert agent_a.stats.resends == resends
        assert len(side.of(ModelUpdate, ids[b])) == 1, "B was acked before any resend"

        # A redelivered assignment is never trained twice.
        agent_b = next(x for x in fleet.agents if x.index == b)
        await side.publish(table.mqtt(MqttTopic.ASSIGNMENT, device=ids[b]), assignments[b])
        await until(
            lambda: agent_b.stats.events[Event.ASSIGNMENT_REPEATED] == 1, 10, "repeat counted"
        )
        assert agent_b.stats.rounds_trained == 1

        # A training's losses are reported once: in the first telemetry after it (round 2: A
        # and B are online), not again (round 3: B is online, it did not train in round 2).
        assert {int(i) for i in scenario.online(2)} == {a, b}
        assert {int(i) for i in scenario.online(3)} == {4, b}

        def announced(r: int) -> int:
            return len([h for h in side.of(Telemetry) if h.message.round == r])

        await side.round_closed(1, versions)
        await side.wait(lambda: announced(2) == 2, 15, "telemetry of round 2")
        await side.round_closed(2, versions)
        await side.wait(lambda: announced(3) == 2, 15, "telemetry of round 3")
        reported: dict[tuple[int, str], dict[str, float]] = {}
        for heard in side.of(Telemetry):
            assert isinstance(heard.message, Telemetry)
            key = (heard.message.round, heard.message.device_id)
            reported[key] = dict(heard.message.expert_loss)
        for i in (a, b):
            losses = fleet.world.train(i, assignments[i], initial).expert_loss
            want = {expert_part_id(e): v for e, v in losses.items()}
            assert reported[(2, ids[i])] == pytest.approx(want)
            assert want, "the device trained experts"
        assert reported[(3, ids[b])] == {}
        assert reported[(3, ids[4])] == {}  # it never trained
        # A status says a change of presence: device 4, unavailable in round 2, is online again
        # for round 3 (status, then telemetry); B, online throughout, sent none since connecting.
        back = [(s.round, s.online, s.reason) for s in statuses(side, ids[4])]
        assert back == [(0, True, "connected"), (2, False, "unavailable"), (3, True, "available")]
        assert [s.reason for s in statuses(side, ids[b])] == ["connected"]

    stats = fleet.stats()
    totals = stats["totals"]
    assert totals["rounds_trained"] == 2
    assert totals["updates_sent"] == 3 + 2  # A: shared + 2 experts, B: shared + 1 expert
    assert totals["updates_acked"] == 2  # B's parts; A's were acked "late"
    assert totals["acks"] == {"applied": 2, "late": 3}
    assert totals["events"]["telemetry_sent"] == 3 + 2 + 2
    assert totals["events"]["unavailable"] == 3 + 4 + 4
    # Every device said goodbye on stop (retained offline status, then a clean disconnect).
    await asyncio.sleep(0)
    for i in range(6):
        assert fleet.agents[i].connected is False


async def _wait_will(side: GatewaySide, device: str, timeout_s: float) -> DeviceStatus:
    await side.wait(
        lambda: any(s.reason == "lost" for s in statuses(side, device)),
        timeout_s,
        f"the last will of {device}",
    )
    return next(s for s in statuses(side, device) if s.reason == "lost")


@pytest.mark.timeout(60)
async def test_dropped_device_leaves_its_will_and_comes_back_to_its_queue(
    broker: BrokerSettings, namespace: str
) -> None:
    scenario_settings = dataclasses.replace(SCENARIO, time_scale=1.0)  # drops within 1.5 s
    scenario = build_scenario(scenario_settings.config())
    settings = fleet_settings(namespace, first=4, count=1, drop_prob=1.0, reconnect_s=2.0)
    fleet = Fleet(broker, settings, scenario_settings, scenario=scenario)
    agent = fleet.agents[0]
    device = agent.device
    side = GatewaySide(broker)
    table = broker.topic_table()
    versions = dict.fromkeys(part_ids(scenario.model), 0)
    async with side.running(), running(fleet):
        await side.wait(lambda: bool(statuses(side, device)), 20, "device connected")
        await side.model(scenario.initial_parts(), 0)
        await side.round_closed(0, versions)
        will = await _wait_will(side, device, 10)
        assert will.online is False
        assert agent.stats.drops == 1
        heard_will_at = time.monotonic()
        # While it is away, an assignment waits for it in its persistent session.
        assignment = Assignment(
            message_id="as-q", device_id=device, round=1, timestamp=time.time(), experts=(2,),
            deadline=time.time() + 30, model_versions=versions,
        )  # fmt: skip
        await side.publish(table.mqtt(MqttTopic.ASSIGNMENT, device=device), assignment)
        await side.wait(
            lambda: any(s.reason != "lost" for s in statuses(side, device)[-1:]),
            10,
            "the device back online",
        )
        back = statuses(side, device)[-1]
        assert time.monotonic() - heard_will_at >= 1.0, "it stayed away a while"
        assert back.round == 0, "the round of its last change of presence: online since then"
        assert back.reason == "reconnected"
        assert agent.stats.events[Event.RECONNECTS] == 1
        await side.wait(lambda: bool(side.of(ModelUpdate, device)), 15, "the queued assignment")
        update = side.of(ModelUpdate, device)[0].message
        assert isinstance(update, ModelUpdate)
        assert [p.part for p in update.parts] == [SHARED, "expert-2"]
        await side.ack(update)
        await until(lambda: agent.stats.applied == {(update.message_id, SHARED),
                                                      (update.message_id, "expert-2")},
                    10, "acked")  # fmt: skip
    stats = fleet.stats()["devices"][device]
    assert stats["drops"] == 1
    assert stats["rounds_trained"] == 1
    assert stats["updates_acked"] == 2


@pytest.mark.timeout(60)
async def test_devices_announce_no_round_after_the_last(
    broker: BrokerSettings, namespace: str
) -> None:
    scenario = build_scenario(SCENARIO.config())
    fleet = Fleet(broker, fleet_settings(namespace), SCENARIO, scenario=scenario)
    ids = [device_id(i) for i in range(6)]
    side = GatewaySide(broker)
    versions = dict.fromkeys(part_ids(scenario.model), 0)
    async with side.running(), running(fleet):
        await side.wait(lambda: all(statuses(side, d) for d in ids), 20, "every device connected")
        await side.model(scenario.initial_parts(), 0)
        await side.round_closed(0, versions, last=True)
        await until(lambda: fleet.last_round == 0, 10, "the last marker heard")
        # A fence: a round after it is announced, by the available devices with telemetry
        # and by the others with "unavailable". Each device handles its markers in order, so
        # an announcement of round 1 would have begun (and counted) before this one.
        await side.round_closed(1, versions)
        online = {int(i) for i in scenario.online(2)}
        await until(
            lambda: sum(a.stats.events[Event.TELEMETRY_SENT] for a in fleet.agents) == len(online),
            15,
            "round 2 announced",
        )
        await until(
            lambda: sum(a.stats.events[Event.UNAVAILABLE] for a in fleet.agents) == 6 - len(online),
            15,
            "the others unavailable in round 2",
        )
    assert {h.message.round for h in side.of(Telemetry)} == {2}
    assert not any(s.round == 1 for d in ids for s in statuses(side, d))


@pytest.mark.timeout(60)
async def test_stop_lets_updates_under_way_be_acknowledged(
    broker: BrokerSettings, namespace: str
) -> None:
    """Acks can trail the RoundClosed a fleet stops on: a stop drains (bounded) first."""
    scenario = build_scenario(SCENARIO.config())
    fleet = Fleet(
        broker,
        fleet_settings(namespace, first=3, count=1, drain_s=30.0),
        SCENARIO,
        scenario=scenario,
    )
    agent = fleet.agents[0]
    device = agent.device
    side = GatewaySide(broker)
    topic = side.table.mqtt(MqttTopic.ASSIGNMENT, device=device)
    versions = dict.fromkeys(part_ids(scenario.model), 0)
    async with side.running():
        task = asyncio.create_task(fleet.run(), name="test:fleet")
        await side.wait(lambda: bool(statuses(side, device)), 20, "device connected")
        await side.model(scenario.initial_parts(), 0)
        await side.round_closed(0, versions)
        first = Assignment(
            message_id="as-1", device_id=device, round=1, timestamp=time.time(), experts=(0,),
            deadline=time.time() + 30, model_versions=versions,
        )  # fmt: skip
        await side.publish(topic, first)
        await side.wait(lambda: bool(side.of(ModelUpdate, device)), 15, "the update")
        fleet.stop()
        # Draining: no new work is taken, the unacknowledged update is still resent.
        second = dataclasses.replace(first, message_id="as-2", round=2)
        await side.publish(topic, second)
        await until(
            lambda: agent.stats.events[Event.ASSIGNMENT_REFUSED] == 1, 10, "assignment refused"
        )
        await side.wait(lambda: len(side.of(ModelUpdate, device)) >= 2, 10, "a resend")
        assert not task.done()
        update = side.of(ModelUpdate, device)[0].message
        assert isinstance(update, ModelUpdate)
        await side.ack(update)
        await asyncio.wait_for(task, 10)  # acked: the fleet stops without waiting out drain_s
        await side.wait(lambda: statuses(side, device)[-1].reason == "stopped", 5, "goodbye")
    stats = fleet.stats()["totals"]
    assert stats["updates_sent"] == stats["updates_acked"] == 2
    assert stats["rounds_trained"] == 1
