"""What feeds the soak's invariants while it runs, each turning one source into `events`:

- `BusWatch`: a handler for the one service runtime over `rounds`, `metrics`, `acks` and
  `dead-letter` (its own group, from the earliest offset), as the demo's observer: verdicts,
  closed parts, opened and closed rounds, accuracy, and the demo's `RunProgress`;
- `JournalTail`: the fleet processes' journals (update parts sent and acked, devices online);
- `Scraper`: every service process's `/metrics` (RSS, the largest partition lag) and
  `/healthz`;
- `SysWatch`: Mosquitto's `$SYS/broker/publish/messages/dropped`, reconnecting across broker
  restarts.

Times are seconds since the soak's start (`t0`, a wall-clock time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from prometheus_client.parser import text_string_to_metric_families

from brokers.errors import BrokerError
from brokers.mqtt import mqtt_client
from brokers.settings import BrokerSettings
from fedmoe.demo.progress import RunProgress
from fedmoe.soak.events import (
    DeviceAcked,
    Dropped,
    LagSample,
    Online,
    PartClosedSeen,
    RoundClosedSeen,
    RoundOpenedSeen,
    RssSample,
    Sent,
    SoakEvent,
    Verdict,
)
from schemas.messages import EvalMetrics, PartClosed, RoundClosed, RoundOpened, UpdateAck
from services.handler import InboundRecord, Outbound

log = logging.getLogger(__name__)

Emit = Callable[[SoakEvent], None]
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


class BusWatch:
    """Handler: Kafka outcome records → events (and the demo's progress fold)."""

    def __init__(self, emit: Emit, t0: float) -> None:
        self._emit = emit
        self._t0 = t0
        self.progress = RunProgress()
        self.accuracy: list[tuple[float, int, float]] = []  # (t, round, accuracy)
        self.changed = asyncio.Event()

    async def handle(self, record: InboundRecord) -> Sequence[Outbound]:
        message = record.message
        self.progress.fold(message)
        now = time.time() - self._t0
        if isinstance(message, UpdateAck):
            key = (message.update_id, message.part)
            self._emit(Verdict(now, key, message.device_id, message.round, message.status))
        elif isinstance(message, PartClosed):
            self._emit(PartClosedSeen(now, message.round, message.part, message.applied))
        elif isinstance(message, RoundOpened):
            t = message.timestamp - self._t0
            self._emit(RoundOpenedSeen(t, message.round, message.deadline - self._t0))
        elif isinstance(message, RoundClosed):
            self._emit(RoundClosedSeen(message.timestamp - self._t0, message.round))
        elif isinstance(message, EvalMetrics):
            self.accuracy.append((message.timestamp - self._t0, message.round, message.accuracy))
        self.changed.set()
        return ()


@dataclass
class JournalTail:
    """Reads the fleet journals' new lines."""

    emit: Emit
    t0: float
    offsets: dict[Path, int] = field(default_factory=dict)
    connected: dict[Path, int] = field(default_factory=dict)
    online: list[tuple[float, int]] = field(default_factory=list)  # (t, devices connected)
    sent = 0
    acked = 0

    def poll(self, paths: Sequence[Path]) -> None:
        """Emit what the journals gained since the last poll."""
        latest = 0.0
        for path in paths:
            try:
                with path.open("rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            self.offsets[path] = self.offsets.get(path, 0) + end
            for raw in data[:end].splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                t = float(line["t"]) - self.t0
                latest = max(latest, t)
                for uid, part in line.get("sent", ()):
                    self.sent += 1
                    self.emit(Sent(t, (uid, part)))
                for uid, part in line.get("acked", ()):
                    self.acked += 1
                    self.emit(DeviceAcked(t, (uid, part)))
                self.connected[path] = int(line.get("connected", 0))
        if latest:
            devices = sum(self.connected.values())
            self.online.append((latest, devices))
            self.emit(Online(latest, devices))


async def http_get(host: str, port: int, path: str, timeout_s: float) -> tuple[int, str]:
    """(status, body) of a plain HTTP GET; `OSError`/`TimeoutError` when it does not answer."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
    parts = head.split(maxsplit=2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer from {host}:{port}{path}")
    return int(parts[1]), body


@dataclass(frozen=True)
class Scrape:
    """What one /metrics answer said."""

    rss_mb: float
    started: float  # process_start_time_seconds: tells incarnations apart
    max_lag: int
    names: frozenset[str]


def parse_metrics(text: str) -> Scrape:
    """RSS, start time, the largest partition lag and every family name of a /metrics body."""
    rss = started = 0.0
    lag = 0
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                rss = sample.value / 2**20
            elif sample.name == "process_start_time_seconds":
                started = sample.value
            elif sample.name == "fedmoe_consumer_lag":
                lag = max(lag, int(sample.value))
    return Scrape(rss, started, lag, frozenset(names))


@dataclass
class Scraper:
    """Scrapes every service process's endpoint."""

    emit: Emit
    t0: float
    timeout_s: float = 2.0
    ok: Counter[str] = field(default_factory=Counter)  # process -> /metrics answers
    failed: Counter[str] = field(default_factory=Counter)
    healthy: Counter[str] = field(default_factory=Counter)  # process -> /healthz 200s
    names: dict[str, frozenset[str]] = field(default_factory=dict)  # service -> families
    lag: list[tuple[float, str, int]] = field(default_factory=list)  # (t, service, lag)
    rss: list[tuple[float, str, float]] = field(default_factory=list)  # (t, process, MB)

    async def scrape(self, process: str, service: str, port: int) -> None:
        """One /metrics and /healthz of one process; a failure is counted, not raised."""
        try:
            status, body = await http_get("127.0.0.1", port, "/metrics", self.timeout_s)
            health, _ = await http_get("127.0.0.1", port, "/healthz", self.timeout_s)
        except (OSError, TimeoutError):
            self.failed[process] += 1
            return
        if status != 200:
            self.failed[process] += 1
            return
        self.ok[process] += 1
        if health == 200:
            self.healthy[process] += 1
        now = time.time() - self.t0
        scrape = parse_metrics(body)
        self.names[service] = scrape.names
        self.lag.append((now, service, scrape.max_lag))
        self.rss.append((now, process, scrape.rss_mb))
        self.emit(LagSample(now, service, process, scrape.max_lag))
        self.emit(RssSample(now, service, int(scrape.started * 1000), scrape.rss_mb))

    async def scrape_all(self, targets: Sequence[tuple[str, str, int]]) -> None:
        """(process, service, port) each, at once."""
        await asyncio.gather(*(self.scrape(*t) for t in targets))


@dataclass
class SysWatch:
    """Follows Mosquitto's dropped-messages counter (reconnects when the broker restarts)."""

    broker: BrokerSettings
    emit: Emit
    t0: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    refused: str = ""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(stop)
            except (aiomqtt.MqttError, BrokerError, OSError, TimeoutError) as exc:
                log.debug("$SYS watch: %s; again", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()

    async def _session(self, stop: asyncio.Event) -> None:
        client = mqtt_client(
            self.broker, client_id=f"soak-sys-{uuid.uuid4().hex[:8]}", persistent=False
        )
        async with asyncio.timeout(10.0):
            await client.__aenter__()
        try:
            async with asyncio.timeout(10.0):
                await client.subscribe(DROPPED_TOPIC, qos=0)
            stopped = asyncio.ensure_future(stop.wait())
            try:
                messages = aiter(client.messages)
                while not stop.is_set():
                    nxt = asyncio.ensure_future(anext(messages))
                    await asyncio.wait({nxt, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        nxt.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await nxt
                        break
                    message = nxt.result()
                    payload = message.payload
                    text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
                    with contextlib.suppress(TypeError, ValueError):
                        count = int(str(text).strip())
                        now = time.time() - self.t0
                        self.samples.append((now, count))
                        self.emit(Dropped(now, count))
            finally:
                stopped.cancel()
        finally:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                async with asyncio.timeout(5.0):
                    await client.__aexit__(None, None, None)
