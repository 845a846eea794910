"""Kafka admin for local and CI brokers: wait until a Kafka-API broker answers, and create
every topic of a `TopicTable` with its partition count and compaction setting.

Every namespace's topics are created up front, with the table's partition counts. Tansu
0.6.0 does auto-create a topic (with 4 partitions) when a client's metadata request names an
unknown one; a topic created that way before `create_topics` ran, with a partition count that
differs from the table's, is reported in `TopicsReport.partition_mismatch`.

Tansu accepts `cleanup.policy=compact` and reports it back from DescribeConfigs, but does not
compact (docs/design.md §5); a broker that rejects the topic config is detected and the topic is
created without it (reported in `TopicsReport.configs_dropped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from brokers.errors import BrokerError, BrokerTimeout
from schemas.topics import KafkaTopicSpec, TopicTable

log = logging.getLogger(__name__)

COMPACT = {"cleanup.policy": "compact"}
_RETRY_S = 0.1


@dataclass
class TopicsReport:
    """What `create_topics` did, per concrete topic name."""

    created: list[str] = field(default_factory=list)
    existed: list[str] = field(default_factory=list)
    configs_dropped: dict[str, str] = field(default_factory=dict)  # topic -> broker's reason
    # topic -> (partitions it has, partitions the table asks for); e.g. a topic that Tansu
    # auto-created (with 4 partitions) when a client asked for it before it was created here.
    partition_mismatch: dict[str, tuple[int, int]] = field(default_factory=dict)


def _topic_configs(spec: KafkaTopicSpec) -> dict[str, str]:
    return dict(COMPACT) if spec.compacted else {}


async def _admin(
    bootstrap: str, timeout_s: float, security: Mapping[str, Any] | None = None
) -> AIOKafkaAdminClient:
    """A started admin client; closed again when the start fails."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1, int(timeout_s * 1000)),
        client_id="fedmoe-admin",
        **(security or {}),
    )
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
    except BaseException:
        await _close(admin)
        raise
    return admin


async def _close(admin: AIOKafkaAdminClient) -> None:
    try:
        async with asyncio.timeout(5.0):
            await admin.close()
    except (TimeoutError, KafkaError, OSError) as exc:
        log.debug("admin client close failed: %r", exc)


async def _tcp_probe(bootstrap: str) -> None:
    """Connect to the first bootstrap server and hang up (OSError when refused)."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def wait_kafka_ready(bootstrap: str, timeout_s: float) -> None:
    """Return once the broker at `bootstrap` answers a metadata request; `BrokerTimeout`
    when it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerTimeout(
                f"Kafka at {bootstrap} not ready after {timeout_s:.1f}s (last error: {last!r})"
            )
        try:
            # A plain TCP connect first: aiokafka logs an ERROR for every refused bootstrap.
            async with asyncio.timeout(min(remaining, 5.0)):
                await _tcp_probe(bootstrap)
            admin = await _admin(bootstrap, min(remaining, 5.0))
            try:
                async with asyncio.timeout(min(remaining, 5.0)):
                    await admin.list_topics()
                return
            finally:
                await _close(admin)
        except (KafkaError, OSError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(min(_RETRY_S, max(0.0, deadline - time.monotonic())))


def _errors(response: Any) -> list[tuple[str, int, str | None]]:
    """(topic, error_code, error_message) from any CreateTopicsResponse version."""
    out: list[tuple[str, int, str | None]] = []
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        out.append((topic, code, message))
    return out


async def _create(
    admin: AIOKafkaAdminClient, topics: list[NewTopic], timeout_s: float
) -> list[tuple[str, int, str | None]]:
    async with asyncio.timeout(timeout_s):
        response = await admin.create_topics(topics, timeout_ms=max(1, int(timeout_s * 1000)))
    return _errors(response)


async def _wait_metadata(
    admin: AIOKafkaAdminClient, wanted: dict[str, int], deadline: float
) -> dict[str, int]:
    """Wait until every topic in `wanted` has partitions with leaders; their actual counts."""
    missing: set[str] = set(wanted)
    counts: dict[str, int] = {}
    while True:
        async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
            described = await admin.describe_topics(sorted(wanted))
        for topic in described:
            name = topic["topic"]
            parts = topic["partitions"]
            if topic["error_code"] == 0 and parts and all(p["leader"] >= 0 for p in parts):
                counts[name] = len(parts)
                missing.discard(name)
        if not missing:
            return counts
        if time.monotonic() >= deadline:
            raise BrokerTimeout(f"topics without metadata after creation: {sorted(missing)}")
        await asyncio.sleep(_RETRY_S)


async def create_topics(
    bootstrap: str,
    table: TopicTable,
    timeout_s: float,
    security: Mapping[str, Any] | None = None,
) -> TopicsReport:
    """Create every Kafka topic of `table` (idempotent: existing topics are fine); `security`
    is `BrokerSettings.kafka_security()` against a cluster with SSL / SASL."""
    deadline = time.monotonic() + timeout_s
    report = TopicsReport()
    specs = dict(table.kafka_specs())
    try:
        admin = await _admin(bootstrap, timeout_s, security)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerTimeout(f"cannot reach Kafka at {bootstrap}: {exc!r}") from exc
    try:
        new = [
            NewTopic(name, spec.partitions, 1, topic_configs=_topic_configs(spec))
            for name, spec in specs.items()
        ]
        retry: list[NewTopic] = []
        for name, code, message in await _create(admin, new, deadline - time.monotonic()):
            if code == 0:
                report.created.append(name)
            elif code == TopicAlreadyExistsError.errno:
                report.existed.append(name)
            elif _topic_configs(specs[name]):
                reason = f"{for_code(code).__name__}: {message}"
                report.configs_dropped[name] = reason
                retry.append(NewTopic(name, specs[name].partitions, 1))
            else:
                raise BrokerError(f"create topic {name}: {for_code(code).__name__}: {message}")
        if retry:
            log.warning(
                "broker refused topic configs, created without them: %s", report.configs_dropped
            )
            for name, code, message in await _create(admin, retry, deadline - time.monotonic()):
                if code == 0:
                    report.created.append(name)
                elif code == TopicAlreadyExistsError.errno:
                    report.existed.append(name)
                else:
                    raise BrokerError(f"create topic {name}: {for_code(code).__name__}: {message}")
        counts = await _wait_metadata(admin, {n: s.partitions for n, s in specs.items()}, deadline)
        for name, spec in specs.items():
            if counts[name] != spec.partitions:
                report.partition_mismatch[name] = (counts[name], spec.partitions)
                log.warning(
                    "topic %s has %d partitions, the table says %d",
                    name,
                    counts[name],
                    spec.partitions,
                )
    except TimeoutError as exc:
        raise BrokerTimeout(f"creating topics of {table.namespace!r} timed out") from exc
    except KafkaError as exc:
        raise BrokerError(f"creating topics of {table.namespace!r}: {exc!r}") from exc
    finally:
        await _close(admin)
    log.info(
        "topics of %r: %d created, %d existed",
        table.namespace,
        len(report.created),
        len(report.existed),
    )
    return report
