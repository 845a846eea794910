"""Benchmark of MQTT ingest through the gateway (MQTT in → Kafka acked → PUBACK), beside the
ceiling of Mosquitto's own C clients on the same loopback, with 1, 2, 4 gateway processes
sharing the device topics through an MQTT 5 shared subscription.

    python -m benchmarks.gateway [--messages N] [--gateways 1,2,4] [--kinds telemetry,update]
                                 [--publishers P] [--update-kb KB]

For each message kind (`telemetry`: a real `Telemetry` of ~320 B; `update`: a `ModelUpdate`
of one expert part of `--update-kb` KB) it measures

- `ceiling`: `mosquitto_pub -l` (QoS 1) → Mosquitto → `mosquitto_sub` (QoS 1) with payloads
  of the same size: what the broker and the loopback carry with C clients on both ends;
- for each gateway count G: P publisher processes (paho, QoS 1, MQTT 5, up to 200 in flight
  each) send N messages spread over 1,000 device ids; the time from the first publish until
  the gateways' `/metrics` count N more PUBACKs, which a gateway sends to Mosquitto only after
  Kafka acknowledged every record the message became (`brokers.mqtt.MqttSession`).

Local brokers run without authentication here (the cost of per-device auth is
`benchmarks.mqtt_auth`) and the gateways' per-device rate limit is off, so the figure is the
pipeline's. Prints one JSON line per (kind, G): `{"benchmark": "gateway", "figure":
"ingest", "unit": "msg/s", "value", "ceiling", "ratio", "mb_per_s", ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cpu import usable_cpus
from brokers._process import free_port
from brokers.local import LocalBrokers
from brokers.settings import LocalBrokerSettings
from fedmoe.demo.processes import ProcessGroup, child_env, fedmoe_argv
from fedmoe.settings import to_env
from schemas.codec import encode
from schemas.messages import ModelUpdate, PartPayload, Telemetry
from schemas.topics import MqttTopic, TopicTable
from services.gateway.settings import GatewaySettings
from services.runtime.settings import RuntimeSettings

DEVICES = 1000
INFLIGHT = 200


def telemetry_payload(device: str, index: int) -> bytes:
    """A real device's telemetry message (8 experts)."""
    return encode(
        Telemetry(
            message_id=f"tm-bench-{index}",
            device_id=device,
            round=1,
            timestamp=time.time(),
            device_type=1,
            compute_ms_per_sample=2.5,
            bandwidth_kbps=2000.0,
            memory_mb=512.0,
            battery=0.8,
            num_samples=120,
            routing_histogram=(0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05),
            expert_loss={"expert-0": 0.4},
            data_loss=0.5,
        )
    )


def update_payload(device: str, index: int, kb: int) -> bytes:
    """A model update of one expert part of `kb` KB of float32 weights."""
    weights = np.full(kb * 256, 0.01, np.float32)
    return encode(
        ModelUpdate(
            message_id=f"up-bench-{index}",
            device_id=device,
            round=1,
            timestamp=time.time(),
            num_samples=120,
            train_seconds=1.0,
            parts=(
                PartPayload(
                    part="expert-0", base_version=0, weight=40.0, loss=0.4, tensors={"w": weights}
                ),
            ),
        )
    )


def _publish(
    port: int, root: str, kind: str, first: int, count: int, kb: int, out: Any, go: Any
) -> None:
    """One publisher process: `count` messages QoS 1; reports (start, end) of its PUBACKs."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    table = TopicTable(mqtt_root=root)
    pattern = MqttTopic.TELEMETRY if kind == "telemetry" else MqttTopic.UPDATE
    messages = []
    for i in range(first, first + count):
        device = f"dev-{i % DEVICES}"
        payload = (
            telemetry_payload(device, i) if kind == "telemetry" else update_payload(device, i, kb)
        )
        messages.append((table.mqtt(pattern, device=device), payload))
    acked = 0
    done = mp.Event()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == count:
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{first}-{uuid.uuid4().hex[:6]}",
        protocol=paho.MQTTv5,
    )
    client.max_inflight_messages_set(INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    go.wait()
    start = time.monotonic()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1)
    ok = done.wait(timeout=300)
    end = time.monotonic()
    client.loop_stop()
    client.disconnect()
    out.put((start, end, acked if ok else -acked, sum(len(p) for _, p in messages)))


def run_publishers(
    port: int, root: str, kind: str, total: int, publishers: int, kb: int
) -> tuple[float, int, int]:
    """(when the first publish went out, messages the broker PUBACKed, bytes)."""
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    share = total // publishers
    procs = [
        ctx.Process(
            target=_publish, args=(port, root, kind, p * share, share, kb, out, go), daemon=True
        )
        for p in range(publishers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # every publisher connected and its messages encoded
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    return min(r[0] for r in results), sum(r[2] for r in results), sum(r[3] for r in results)


def c_client_ceiling(port: int, size: int, messages: int) -> tuple[float, float]:
    """(msg/s, MB/s) of mosquitto_pub → Mosquitto → mosquitto_sub, QoS 1, `size`-byte lines."""
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: `make setup` installs mosquitto-clients")
    topic = f"bench/ceiling/{uuid.uuid4().hex[:8]}"
    common = ["-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1", "-V", "mqttv5"]
    with tempfile.NamedTemporaryFile("wb", suffix=".lines", delete=False) as lines:
        line = b"x" * (size - 1) + b"\n"
        lines.write(line * messages)
    try:
        sub = subprocess.Popen(
            ["mosquitto_sub", *common, "-C", str(messages)], stdout=subprocess.DEVNULL
        )
        time.sleep(0.5)  # subscribed
        start = time.monotonic()
        with open(lines.name, "rb") as stdin:
            subprocess.run(["mosquitto_pub", *common, "-l"], stdin=stdin, check=True)
        sub.wait(timeout=300)
        seconds = time.monotonic() - start
    finally:
        os.unlink(lines.name)
    return messages / seconds, messages * size / seconds / 1e6


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    run_dir = Path(tempfile.mkdtemp(prefix="fedmoe-bench-gateway-"))
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    local = LocalBrokerSettings(
        run_dir=str(run_dir / "brokers"), namespace=namespace, mqtt_insecure=True
    )
    async with LocalBrokers(local) as brokers:
        broker = brokers.broker_settings(namespace, mqtt_root=namespace)
        port = int(broker.mqtt_url.rsplit(":", 1)[1])
        for kind in args.kinds.split(","):
            size = len(
                telemetry_payload("dev-0", 0)
                if kind == "telemetry"
                else update_payload("dev-0", 0, args.update_kb)
            )
            messages = args.messages if kind == "telemetry" else max(200, args.messages // 20)
            ceil_rate, ceil_mb = await asyncio.to_thread(c_client_ceiling, port, size, messages)
            for gateways in (int(g) for g in args.gateways.split(",")):
                rate, mb, acked = await _through_gateways(
                    run_dir, broker, gateways, kind, messages, args
                )
                lines.append(
                    {
                        "benchmark": "gateway",
                        "figure": "ingest",
                        "unit": "msg/s",
                        "value": round(rate, 1),
                        "ceiling": round(ceil_rate, 1),
                        "ratio": round(rate / ceil_rate, 3),
                        "mb_per_s": round(mb, 2),
                        "ceiling_mb_per_s": round(ceil_mb, 2),
                        "kind": kind,
                        "message_bytes": size,
                        "messages": messages,
                        "acked": acked,
                        "gateways": gateways,
                        "publishers": args.publishers,
                        "cpus": usable_cpus(),
                    }
                )
                print(json.dumps(lines[-1]), flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)  # kept when a run failed: its logs
    return lines


async def _through_gateways(
    run_dir: Path, broker: Any, gateways: int, kind: str, messages: int, args: argparse.Namespace
) -> tuple[float, float, int]:
    group_dir = run_dir / f"{kind}-{gateways}"
    ports = [free_port() for _ in range(gateways)]
    async with ProcessGroup(group_dir / "logs") as group:
        for g in range(gateways):
            # A share group of its own per configuration: the stopped gateways of the last
            # one keep their persistent sessions in theirs, and Mosquitto would keep handing
            # them their share.
            settings = GatewaySettings(
                client_id=f"gateway-{kind}-{gateways}-{g}",
                share_group=f"bench-{kind}-{gateways}",
                rate_per_s=0.0,
            )
            env = child_env(
                os.environ,
                to_env(broker),
                to_env(settings),
                to_env(RuntimeSettings(metrics_port=ports[g])),
            )
            await group.start(f"gateway-{g}", fedmoe_argv("service", "gateway"), env)
        # Several processes importing the project at once on a small machine take a while.
        deadline = time.monotonic() + 300
        while not all(_ready(p) for p in ports):
            group.check_running()
            if time.monotonic() > deadline:
                raise SystemExit(f"gateways not ready after 300 s; logs in {group_dir}")
            await asyncio.sleep(0.2)
        port = int(broker.mqtt_url.rsplit(":", 1)[1])
        root = broker.mqtt_root
        # Warm up (Kafka producers, partition leaders), then measure.
        warm = 50 * args.publishers
        await asyncio.to_thread(
            run_publishers, port, root, kind, warm, args.publishers, args.update_kb
        )
        await _wait_pubacked(ports, warm, timeout_s=120)
        publishing = asyncio.create_task(
            asyncio.to_thread(
                run_publishers, port, root, kind, messages, args.publishers, args.update_kb
            )
        )
        end = await _wait_pubacked(ports, warm + messages, timeout_s=600)
        start, _, nbytes = await publishing
    seconds = end - start
    return messages / seconds, nbytes / seconds / 1e6, messages


def pubacked(port: int) -> int:
    """Messages a gateway PUBACKed after Kafka acknowledged them (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("fedmoe_records_total") and 'outcome="pubacked"' in line
    )


async def _wait_pubacked(ports: Sequence[int], total: int, *, timeout_s: float) -> float:
    """Poll the gateways' counters until `total` messages were PUBACKed; returns when."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = await asyncio.to_thread(lambda: sum(pubacked(p) for p in ports))
        if counts >= total:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"gateways PUBACKed {counts} of {total} messages in {timeout_s} s")
        await asyncio.sleep(0.02)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="telemetry messages")
    parser.add_argument("--gateways", default="1,2,4", help="gateway process counts")
    parser.add_argument("--kinds", default="telemetry,update", help="telemetry and/or update")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--update-kb", type=int, default=64, help="update payload, KB")
    args = parser.parse_args(argv)
    asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
