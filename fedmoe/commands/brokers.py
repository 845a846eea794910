"""`fedmoe brokers up|smoke`: local Kafka-API (Tansu) and Mosquitto brokers.

`up` starts both on loopback, creates every topic of the namespace, prints exactly

    FEDMOE_KAFKA_BOOTSTRAP=127.0.0.1:<port>
    FEDMOE_MQTT_URL=mqtt://127.0.0.1:<port>
    FEDMOE_DEVICE_REGISTRY=<dir>          (none with --mqtt-insecure)
    FEDMOE_MQTT_CA_FILE=<dir>/ca.crt      (only with --mqtt-tls: the URL is then mqtts://)

on stdout once both are ready (so `eval "$(...)"`-style wrappers and tests can read them), and
runs until SIGINT/SIGTERM/SIGHUP, then stops both brokers. Mosquitto authenticates every
client against the registry (empty at first: provision accounts with `fedmoe devices add
--registry <dir>`, which reloads this broker); `--mqtt-insecure` turns that off for
debugging and says so loudly. The brokers also get SIGTERM when
this process dies some other way (Linux parent-death signal), so none is left behind.

`smoke` starts the brokers, produces and consumes one Kafka record and one QoS1 MQTT message,
prints one JSON line with the timings and `"ok"`, and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

import aiomqtt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from brokers.admin import create_topics
from brokers.errors import BrokerError
from brokers.local import INSECURE_WARNING, LocalBrokers
from brokers.mqtt import mqtt_client
from brokers.settings import BrokerSettings, LocalBrokerSettings
from fedmoe.errors import FedMoEError, SettingsError
from fedmoe.settings import add_arguments, from_args
from fedmoe.signals import stop_on_signals
from schemas.topics import MqttTopic, Topic

log = logging.getLogger("fedmoe.brokers")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmoe brokers", description="local Kafka-API (Tansu) and Mosquitto brokers"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (
        ("up", "run both brokers until SIGINT/SIGTERM; print their addresses"),
        ("smoke", "start both, one Kafka and one MQTT round trip, print JSON, stop"),
    ):
        action = sub.add_parser(name, help=text, description=text)
        add_arguments(action, LocalBrokerSettings)
        action.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    text = "create every Kafka topic of the namespace on an external cluster, then exit"
    action = sub.add_parser("topics", help=text, description=text)
    add_arguments(action, BrokerSettings)
    action.add_argument("--timeout-s", type=float, default=60.0, help="give up after this long")
    action.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `fedmoe brokers`."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.action == "topics":
            return asyncio.run(topics(from_args(BrokerSettings, args, os.environ), args.timeout_s))
        settings = from_args(LocalBrokerSettings, args, os.environ)
    except SettingsError as exc:
        print(f"fedmoe brokers: {exc}", file=sys.stderr)
        return 2
    if args.action == "up":
        return asyncio.run(up(settings))
    return asyncio.run(smoke(settings))


async def topics(settings: BrokerSettings, timeout_s: float) -> int:
    """Create the namespace's topics on the cluster at `settings.kafka_bootstrap` (idempotent)."""
    try:
        report = await create_topics(
            settings.kafka_bootstrap,
            settings.topic_table(),
            timeout_s,
            security=settings.kafka_security(),
        )
    except (BrokerError, SettingsError) as exc:
        print(f"fedmoe brokers topics: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(report), sort_keys=True, default=str), flush=True)
    return 0


async def up(settings: LocalBrokerSettings) -> int:
    """Run both brokers until a stop signal (0) or until one of them dies (1)."""
    stop = asyncio.Event()
    with stop_on_signals(stop.set, _STOP_SIGNALS):
        return await _serve(settings, stop)


async def _serve(settings: LocalBrokerSettings, stop: asyncio.Event) -> int:
    try:
        async with LocalBrokers(settings) as brokers:
            assert brokers.tansu is not None
            assert brokers.mosquitto is not None
            if stop.is_set():
                return 0
            try:
                print(f"FEDMOE_KAFKA_BOOTSTRAP={brokers.kafka_bootstrap}", flush=True)
                print(f"FEDMOE_MQTT_URL={brokers.mqtt_url}", flush=True)
                if brokers.registry is not None:
                    print(f"FEDMOE_DEVICE_REGISTRY={brokers.registry.path}", flush=True)
                if brokers.tls is not None:
                    print(f"FEDMOE_MQTT_CA_FILE={brokers.tls.ca_file}", flush=True)
            except BrokenPipeError:
                log.warning("stdout is closed; the brokers keep running")
            print(
                f"fedmoe brokers: up (namespace {brokers.namespace!r}, run dir "
                f"{brokers.run_dir}); SIGINT/SIGTERM stops them",
                file=sys.stderr,
                flush=True,
            )
            if brokers.registry is None:
                print(INSECURE_WARNING, file=sys.stderr, flush=True)
            stopped = asyncio.ensure_future(stop.wait())
            watch = {
                asyncio.ensure_future(brokers.tansu.wait_exited()): "tansu",
                asyncio.ensure_future(brokers.mosquitto.wait_exited()): "mosquitto",
            }
            try:
                done, _ = await asyncio.wait({stopped, *watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stopped, *watch):
                    task.cancel()
            died = [f"{watch[t]} (status {t.result()})" for t in done if t in watch]
            if died:
                print(f"fedmoe brokers: broker exited: {', '.join(died)}", file=sys.stderr)
                return 1
            return 0
    except FedMoEError as exc:
        print(f"fedmoe brokers: {exc}", file=sys.stderr)
        return 1


async def kafka_roundtrip(settings: BrokerSettings, timeout_s: float) -> float:
    """Produce one record to the namespace's telemetry topic and consume it back; seconds."""
    topic = settings.topic_table().name(Topic.TELEMETRY)
    key, value = b"smoke", uuid.uuid4().bytes
    started = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks=settings.producer_acks(),
        enable_idempotence=settings.kafka_idempotent,
        request_timeout_ms=int(settings.request_timeout_s * 1000),
        **settings.kafka_security(),
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(settings.request_timeout_s * 1000),
        **settings.kafka_security(),
    )
    async with asyncio.timeout(timeout_s):
        await producer.start()
        try:
            meta = await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()
        await consumer.start()
        try:
            partition = TopicPartition(topic, meta.partition)
            consumer.assign([partition])
            consumer.seek(partition, meta.offset)
            record = await consumer.getone()
        finally:
            await consumer.stop()
    if (record.key, record.value) != (key, value):
        raise FedMoEError(f"Kafka smoke: read back {record!r}, not the record produced")
    return time.monotonic() - started


async def mqtt_roundtrip(
    settings: BrokerSettings,
    timeout_s: float,
    device: str | None = None,
    password: str | None = None,
) -> float:
    """Subscribe, publish one QoS1 message to ourselves (as `device`, with `password` when
    given), receive it; seconds."""
    table = settings.topic_table()
    device = device or f"smoke-{uuid.uuid4().hex[:8]}"
    topic = table.mqtt(MqttTopic.TELEMETRY, device=device)
    payload = uuid.uuid4().bytes
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        client = mqtt_client(
            settings,
            client_id=device,
            persistent=False,
            username=device if password else None,
            password=password,
        )
        async with client:
            await client.subscribe(topic, qos=1)
            await client.publish(topic, payload, qos=1)
            async for message in client.messages:
                if message.payload == payload:
                    break
    return time.monotonic() - started


async def smoke(settings: LocalBrokerSettings, timeout_s: float = 60.0) -> int:
    """Start the brokers, one round trip on each, print one JSON line; 0 when all went well."""
    result: dict[str, Any] = {"ok": False}
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            async with LocalBrokers(settings) as brokers:
                result["start_s"] = round(time.monotonic() - started, 4)
                result["kafka_bootstrap"] = brokers.kafka_bootstrap
                result["mqtt_url"] = brokers.mqtt_url
                result["topics_created"] = len(brokers.topics[brokers.namespace].created)
                broker_settings = brokers.broker_settings()
                result["kafka_roundtrip_s"] = round(
                    await kafka_roundtrip(broker_settings, timeout_s / 3), 4
                )
                device, password = None, None
                if brokers.registry is not None:
                    # A device account of its own, as any client must have with auth on.
                    device = f"smoke-{uuid.uuid4().hex[:8]}"
                    password = brokers.registry.add([device])[device]
                    assert brokers.mosquitto is not None
                    await brokers.mosquitto.reload()
                result["mqtt_auth"] = brokers.registry is not None
                result["mqtt_roundtrip_s"] = round(
                    await mqtt_roundtrip(broker_settings, timeout_s / 3, device, password), 4
                )
                stopping = time.monotonic()
            result["stop_s"] = round(time.monotonic() - stopping, 4)
        result["ok"] = True
    except (FedMoEError, KafkaError, aiomqtt.MqttError, OSError, TimeoutError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["total_s"] = round(time.monotonic() - started, 4)
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1
