"""`RuntimeSettings`: the consume loop's knobs, shared by every service (`FEDMOE_RUNTIME_*`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.errors import SettingsError
from fedmoe.settings import setting


@dataclass(frozen=True)
class RuntimeSettings:
    """How the one consume→handle→produce loop batches, retries, ticks and stops."""

    max_batch: int = setting(
        "FEDMOE_RUNTIME_MAX_BATCH", 256, "records handled per batch (one commit per batch)"
    )
    poll_timeout_s: float = setting(
        "FEDMOE_RUNTIME_POLL_TIMEOUT_S", 0.5, "longest wait for records before looping, seconds"
    )
    tick_interval_s: float = setting(
        "FEDMOE_RUNTIME_TICK_INTERVAL_S", 1.0, "on_tick period for handlers that have one"
    )
    retry_initial_s: float = setting(
        "FEDMOE_RUNTIME_RETRY_INITIAL_S", 0.1, "first retry backoff, seconds (doubles per try)"
    )
    retry_max_s: float = setting("FEDMOE_RUNTIME_RETRY_MAX_S", 5.0, "retry backoff cap, seconds")
    drain_timeout_s: float = setting(
        "FEDMOE_RUNTIME_DRAIN_TIMEOUT_S",
        15.0,
        "on stop: how long in-flight work may take to finish and commit, seconds",
    )
    rebalance_timeout_s: float = setting(
        "FEDMOE_RUNTIME_REBALANCE_TIMEOUT_S",
        20.0,
        "on revoke: how long in-flight work may take to finish and commit, seconds",
    )
    session_timeout_s: float = setting(
        "FEDMOE_RUNTIME_SESSION_TIMEOUT_S",
        10.0,
        "consumer group session timeout: a dead member's partitions move after this",
    )
    max_poll_interval_s: float = setting(
        "FEDMOE_RUNTIME_MAX_POLL_INTERVAL_S", 300.0, "longest gap between polls, seconds"
    )
    metrics_interval_s: float = setting(
        "FEDMOE_RUNTIME_METRICS_INTERVAL_S", 30.0, "period of the metrics log line, seconds"
    )
    metrics_port: int = setting(
        "FEDMOE_METRICS_PORT",
        0,
        "port of the process's HTTP endpoint: /metrics (Prometheus), /healthz, /readyz (0 = off)",
    )
    metrics_host: str = setting(
        "FEDMOE_METRICS_HOST", "127.0.0.1", "address the metrics endpoint binds (0.0.0.0 in docker)"
    )
    ready_max_lag: int = setting(
        "FEDMOE_RUNTIME_READY_MAX_LAG",
        1000,
        "/readyz answers 503 while any owned partition is more records behind than this",
    )
    auto_offset_reset: str = setting(
        "FEDMOE_RUNTIME_AUTO_OFFSET_RESET",
        "earliest",
        "where a group without committed offsets starts: earliest or latest",
    )

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise SettingsError("FEDMOE_RUNTIME_MAX_BATCH must be >= 1")
        for env, value in (
            ("FEDMOE_RUNTIME_POLL_TIMEOUT_S", self.poll_timeout_s),
            ("FEDMOE_RUNTIME_TICK_INTERVAL_S", self.tick_interval_s),
            ("FEDMOE_RUNTIME_RETRY_INITIAL_S", self.retry_initial_s),
            ("FEDMOE_RUNTIME_RETRY_MAX_S", self.retry_max_s),
            ("FEDMOE_RUNTIME_DRAIN_TIMEOUT_S", self.drain_timeout_s),
            ("FEDMOE_RUNTIME_REBALANCE_TIMEOUT_S", self.rebalance_timeout_s),
            ("FEDMOE_RUNTIME_SESSION_TIMEOUT_S", self.session_timeout_s),
            ("FEDMOE_RUNTIME_MAX_POLL_INTERVAL_S", self.max_poll_interval_s),
            ("FEDMOE_RUNTIME_METRICS_INTERVAL_S", self.metrics_interval_s),
        ):
            if not value > 0:
                raise SettingsError(f"{env}: {value} is not > 0")
        if not 0 <= self.metrics_port < 65536:
            raise SettingsError(f"FEDMOE_METRICS_PORT: {self.metrics_port} is not a port or 0")
        if self.ready_max_lag < 0:
            raise SettingsError("FEDMOE_RUNTIME_READY_MAX_LAG must be >= 0")
        if self.retry_max_s < self.retry_initial_s:
            raise SettingsError("FEDMOE_RUNTIME_RETRY_MAX_S must be >= the initial backoff")
        if self.auto_offset_reset not in {"earliest", "latest"}:
            raise SettingsError(
                f"FEDMOE_RUNTIME_AUTO_OFFSET_RESET: {self.auto_offset_reset!r} is not "
                "earliest or latest"
            )
