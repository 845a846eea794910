"""Local brokers: the fixtures, `fedmoe brokers up` as a real process, Mosquitto's limits and
its persistence across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from brokers.admin import create_topics
from brokers.errors import BrokerLaunchError
from brokers.local import LocalBrokers
from brokers.mosquitto import MosquittoBroker
from brokers.settings import BrokerSettings, LocalBrokerSettings
from brokers.tansu import TansuBroker
from fedmoe.commands import brokers as brokers_command
from schemas.limits import MAX_MESSAGE_BYTES
from schemas.topics import KAFKA_TOPICS, Topic, TopicTable

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 20.0


# ---------------------------------------------------------------- helpers


async def _kafka_roundtrip(bootstrap: str, topic: str) -> None:
    value = uuid.uuid4().bytes
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    async with asyncio.timeout(TIMEOUT_S):
        await producer.start()
        try:
            meta = await producer.send_and_wait(topic, value, key=b"k")
        finally:
            await producer.stop()
        await consumer.start()
        try:
            tp = TopicPartition(topic, meta.partition)
            consumer.assign([tp])
            consumer.seek(tp, meta.offset)
            record = await consumer.getone()
        finally:
            await consumer.stop()
    assert (record.key, record.value) == (b"k", value)


async def _mqtt_roundtrip(
    host: str,
    port: int,
    topic: str,
    payload: bytes,
    username: str | None = None,
    password: str | None = None,
) -> None:
    client = aiomqtt.Client(host, port, timeout=TIMEOUT_S, username=username, password=password)
    async with asyncio.timeout(TIMEOUT_S), client as c:
        await c.subscribe(topic, qos=1)
        await c.publish(topic, payload, qos=1)
        async for message in c.messages:
            assert message.payload == payload
            break


def _proc_identity(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, start time) of a live process from /proc, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], fields[0], int(fields[19])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


async def _wait_gone(procs: dict[int, tuple[str, str, int]], timeout_s: float) -> list[str]:
    """Poll until every (pid, start time) is gone or a zombie; the ones still alive."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid, (comm, _, start) in procs.items():
            now = _proc_identity(pid)
            if now is not None and now[2] == start and now[1] != "Z":
                alive.append(f"{comm}[{pid}]")
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.05)


async def _start_brokers_up(
    tmp_path: Path,
) -> tuple[asyncio.subprocess.Process, dict[str, str], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOE_")}
    stderr_path = tmp_path / "brokers-up.err"
    with stderr_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fedmoe.cli",
            "brokers",
            "up",
            "--run-dir",
            str(tmp_path / "run"),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=REPO,
            env=env,
        )
    assert proc.stdout is not None
    lines: dict[str, str] = {}
    try:
        async with asyncio.timeout(60):
            while len(lines) < 3:
                raw = await proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"brokers up exited: {stderr_path.read_text()}")
                name, _, value = raw.decode().rstrip("\n").partition("=")
                lines[name] = value
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, lines, stderr_path


@pytest.fixture
async def brokers_up(
    tmp_path: Path,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str], Path]]:
    started = await _start_brokers_up(tmp_path)
    yield started
    proc = started[0]
    if proc.returncode is None:  # the test failed before stopping it
        proc.kill()
        async with asyncio.timeout(TIMEOUT_S):
            await proc.wait()


# ---------------------------------------------------------------- fixtures


async def test_broker_env_creates_every_topic(
    broker_env: BrokerSettings, local_brokers: LocalBrokers
) -> None:
    table = broker_env.topic_table()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker_env.kafka_bootstrap)
    async with asyncio.timeout(TIMEOUT_S):
        await admin.start()
        try:
            described = await admin.describe_topics([name for name, _ in table.kafka_specs()])
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, table.name(Topic.MODEL))]
            )
        finally:
            await admin.close()
    partitions = {t["topic"]: len(t["partitions"]) for t in described}
    assert partitions == {name: spec.partitions for name, spec in table.kafka_specs()}
    # Tansu keeps the compaction config it was given (it does not compact, docs/design.md §5).
    entries = configs[0].resources[0][4]
    assert ("cleanup.policy", "compact") in [(e[0], e[1]) for e in entries]
    report = local_brokers.topics[broker_env.namespace]
    assert len(report.created) == len(KAFKA_TOPICS)
    assert report.configs_dropped == {}
    assert report.partition_mismatch == {}


async def test_create_topics_is_idempotent(broker_env: BrokerSettings) -> None:
    report = await create_topics(broker_env.kafka_bootstrap, broker_env.topic_table(), TIMEOUT_S)
    assert report.created == []
    assert len(report.existed) == len(KAFKA_TOPICS)


async def test_brokers_topics_command_creates_a_namespace(
    local_brokers: LocalBrokers, namespace: str
) -> None:
    env = {**os.environ, **local_brokers.env(), "FEDMOE_NAMESPACE": namespace}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fedmoe",
        "brokers",
        "topics",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert sorted(report["created"]) == sorted(n for n, _ in TopicTable(namespace).kafka_specs())


async def test_broker_env_kafka_roundtrip(broker_env: BrokerSettings) -> None:
    assert broker_env.kafka_bootstrap.startswith("127.0.0.1:")
    await _kafka_roundtrip(broker_env.kafka_bootstrap, broker_env.topic_table().name(Topic.UPDATES))


async def test_broker_env_mqtt_roundtrip(broker_env: BrokerSettings) -> None:
    host, port = broker_env.mqtt_host_port()
    assert host == "127.0.0.1"
    topic = f"{broker_env.mqtt_root}/{broker_env.namespace}/telemetry"
    await _mqtt_roundtrip(host, port, topic, b"hello")


async def test_mqtt_max_packet_size(broker_env: BrokerSettings) -> None:
    host, port = broker_env.mqtt_host_port()
    topic = f"{broker_env.mqtt_root}/{broker_env.namespace}/update"
    # The largest valid message (plus topic and header bytes) fits ...
    await _mqtt_roundtrip(host, port, topic, bytes(MAX_MESSAGE_BYTES))
    # ... and an oversize packet is refused loudly: the broker drops the connection
    # (its log says "disconnected due to oversize packet").
    error = await _publish_until_disconnected(host, port, topic, bytes(10 * 1024 * 1024))
    assert "Disconnected" in str(error)


async def _publish_until_disconnected(
    host: str, port: int, topic: str, payload: bytes
) -> aiomqtt.MqttError:
    """Publish `payload` and return the error that ends the session (the broker hanging up)."""
    client = aiomqtt.Client(host, port, timeout=TIMEOUT_S)
    async with asyncio.timeout(TIMEOUT_S):
        await client.__aenter__()
        publish = asyncio.create_task(client.publish(topic, payload, qos=1))
        caught: aiomqtt.MqttError | None = None
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError as exc:
            caught = exc
        finally:
            publish.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await publish
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
    assert caught is not None
    return caught


# ---------------------------------------------------------------- `fedmoe brokers`


async def test_brokers_up_subprocess(
    brokers_up: tuple[asyncio.subprocess.Process, dict[str, str], Path], tmp_path: Path
) -> None:
    proc, lines, stderr_path = brokers_up
    assert re.fullmatch(r"127\.0\.0\.1:\d{2,5}", lines["FEDMOE_KAFKA_BOOTSTRAP"])
    assert re.fullmatch(r"mqtt://127\.0\.0\.1:\d{2,5}", lines["FEDMOE_MQTT_URL"])
    children = {pid: ident for pid in _children(proc.pid) if (ident := _proc_identity(pid))}
    assert sorted(comm for comm, _, _ in children.values()) == ["mosquitto", "tansu"]

    settings = BrokerSettings(
        kafka_bootstrap=lines["FEDMOE_KAFKA_BOOTSTRAP"],
        mqtt_url=lines["FEDMOE_MQTT_URL"],
        namespace=f"up-{uuid.uuid4().hex[:8]}",
    )
    await create_topics(settings.kafka_bootstrap, settings.topic_table(), TIMEOUT_S)
    await _kafka_roundtrip(settings.kafka_bootstrap, settings.topic_table().name(Topic.ACKS))
    # The namespace created at start (default "fedmoe") is there too.
    await _kafka_roundtrip(settings.kafka_bootstrap, TopicTable().name(Topic.TELEMETRY))
    # Auth is on by default: anonymous clients are refused; a device provisioned in the
    # printed registry gets in once `fedmoe devices` reloaded the broker (its pid file).
    host, port = settings.mqtt_host_port()
    with pytest.raises(aiomqtt.MqttError):
        await _mqtt_roundtrip(host, port, "fleet/dev-1/telemetry", b"anonymous")
    registry = lines["FEDMOE_DEVICE_REGISTRY"]
    secrets = tmp_path / "secrets.json"
    add = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedmoe", "devices", "add", "dev-1", "--registry", registry,
        "--secrets-file", str(secrets), cwd=REPO, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(TIMEOUT_S):
        _, err = await add.communicate()
    assert add.returncode == 0
    assert b"reloaded" in err, err
    secret = json.loads(secrets.read_text())["dev-1"]
    await _mqtt_roundtrip(host, port, "fleet/dev-1/telemetry", b"up", "dev-1", secret)

    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(TIMEOUT_S):
        code = await proc.wait()
    assert code == 0, stderr_path.read_text()
    assert await _wait_gone(children, 5.0) == []


async def test_brokers_up_sigint(
    brokers_up: tuple[asyncio.subprocess.Process, dict[str, str], Path],
) -> None:
    proc, _, stderr_path = brokers_up
    children = {pid: ident for pid in _children(proc.pid) if (ident := _proc_identity(pid))}
    assert len(children) == 2
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(TIMEOUT_S):
        assert await proc.wait() == 0, stderr_path.read_text()
    assert await _wait_gone(children, 5.0) == []


async def test_brokers_die_with_a_killed_parent(
    brokers_up: tuple[asyncio.subprocess.Process, dict[str, str], Path],
) -> None:
    proc, _, _ = brokers_up
    children = {pid: ident for pid in _children(proc.pid) if (ident := _proc_identity(pid))}
    assert len(children) == 2
    proc.kill()  # no chance to clean up: the parent-death signal must stop the brokers
    async with asyncio.timeout(TIMEOUT_S):
        await proc.wait()
    assert await _wait_gone(children, TIMEOUT_S) == []


def test_brokers_smoke(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert brokers_command.main(["smoke", "--run-dir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] is True
    assert result["topics_created"] == len(KAFKA_TOPICS)
    assert {"start_s", "kafka_roundtrip_s", "mqtt_roundtrip_s", "stop_s"} <= result.keys()


# ---------------------------------------------------------------- launchers


async def test_mosquitto_keeps_persistent_session_across_restart(tmp_path: Path) -> None:
    async with MosquittoBroker(tmp_path / "mqtt", start_timeout_s=TIMEOUT_S) as broker:
        port = broker.port
        topic, device = "fleet/dev-7/assignment", f"dev-7-{uuid.uuid4().hex[:6]}"

        async with asyncio.timeout(TIMEOUT_S):
            # A persistent session subscribes, then goes offline.
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier=device, clean_session=False, timeout=TIMEOUT_S
            ) as device_client:
                await device_client.subscribe(topic, qos=1)
            # A QoS1 message is queued for it while it is away.
            async with aiomqtt.Client("127.0.0.1", port, timeout=TIMEOUT_S) as sender:
                await sender.publish(topic, b"queued", qos=1)

        await broker.restart()
        assert broker.port == port

        async with (
            asyncio.timeout(TIMEOUT_S),
            aiomqtt.Client(
                "127.0.0.1", port, identifier=device, clean_session=False, timeout=TIMEOUT_S
            ) as device_client,
        ):
            # No new subscribe: the session and its queued message came back from disk.
            async for message in device_client.messages:
                assert (str(message.topic), message.payload) == (topic, b"queued")
                break
    assert (tmp_path / "mqtt" / "mosquitto-data" / "mosquitto.db").is_file()


async def test_mosquitto_port_taken_is_a_launch_error(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        broker = MosquittoBroker(tmp_path, port=port, start_timeout_s=10)
        with pytest.raises(BrokerLaunchError, match="mosquitto") as info:
            await broker.start()
        assert "Address already in use" in str(info.value)
        assert not broker.running
    finally:
        server.close()
        await server.wait_closed()


async def test_tansu_port_taken_is_a_launch_error(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(BrokerLaunchError, match=r"Tansu on 127\.0\.0\.1"):
            await TansuBroker(tmp_path, port=port, start_timeout_s=5).start()
    finally:
        server.close()
        await server.wait_closed()


async def test_local_brokers_temp_run_dir_is_removed() -> None:
    brokers = LocalBrokers(LocalBrokerSettings(namespace="tmpdir-check"))
    async with brokers:
        run_dir = brokers.run_dir
        assert run_dir is not None
        assert run_dir.is_dir()
        assert set(brokers.env()) == {
            "FEDMOE_KAFKA_BOOTSTRAP",
            "FEDMOE_MQTT_URL",
            "FEDMOE_NAMESPACE",
        }
    assert not run_dir.exists()
