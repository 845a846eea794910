"""`FleetSettings` (`FEDMOE_FLEET_*`): which devices a fleet process runs and how they behave.

Where the brokers are comes from `BrokerSettings` and the world (devices, data, capabilities,
deadline, time scale) from `ScenarioSettings`, the same ones every service of the run reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from schemas.topics import valid_segment


@dataclass(frozen=True)
class FleetSettings:
    """One fleet process: devices [first, first + count) of the scenario and their faults."""

    first: int = setting("FEDMOE_FLEET_FIRST", 0, "index of the first device this process runs")
    count: int = setting(
        "FEDMOE_FLEET_COUNT", 0, "devices this process runs (0 = every device from --first on)"
    )
    stats_file: str = setting(
        "FEDMOE_FLEET_STATS_FILE", "", "where to write the fleet's counters as JSON at exit"
    )
    stop_after_round: int = setting(
        "FEDMOE_FLEET_STOP_AFTER_ROUND",
        0,
        "stop once RoundClosed of this round was heard (0 = run until SIGTERM/SIGINT)",
    )
    drain_s: float = setting(
        "FEDMOE_FLEET_DRAIN_S",
        10.0,
        "on stop: how long devices may finish the rounds under way (uploads acked), seconds",
    )
    time_from_open: bool = setting(
        "FEDMOE_FLEET_TIME_FROM_OPEN",
        True,
        "count a device's simulated round time from the round's open time (the assignment's "
        "timestamp; the bus's delivery delay is part of it) instead of the assignment's arrival",
    )
    resend_s: float = setting(
        "FEDMOE_FLEET_RESEND_S",
        5.0,
        "resend an update (same ids) when not every part was acknowledged after this, seconds",
    )
    max_resends: int = setting(
        "FEDMOE_FLEET_MAX_RESENDS", 60, "give an update up after this many resends"
    )
    model_wait_s: float = setting(
        "FEDMOE_FLEET_MODEL_WAIT_S",
        30.0,
        "longest wait for the retained model parts a round or an assignment names, seconds",
    )
    drop_prob: float = setting(
        "FEDMOE_FLEET_DROP_PROB",
        0.0,
        "per round and device: probability that it drops its MQTT connection abruptly",
    )
    reconnect_s: float = setting(
        "FEDMOE_FLEET_RECONNECT_S",
        3.0,
        "how long a dropped device stays away before it reconnects, seconds",
    )
    client_prefix: str = setting(
        "FEDMOE_FLEET_CLIENT_PREFIX",
        "",
        "prefix of each device's MQTT client id (client id = prefix + device id); lets two "
        "fleets share a broker without sharing persistent sessions",
    )
    session_expiry_s: int = setting(
        "FEDMOE_FLEET_SESSION_EXPIRY_S",
        3600,
        "how long the broker keeps a device's session (and its queued messages) while away",
    )
    keepalive_s: int = setting("FEDMOE_FLEET_KEEPALIVE_S", 30, "MQTT keepalive, seconds")
    from_recording: str = setting(
        "FEDMOE_FLEET_FROM_RECORDING",
        "",
        "devices' availability, capabilities and timing from this recording (.parquet) or "
        "FedScale trace (.json) instead of the generator (empty = the generator)",
    )
    trace_round_s: float = setting(
        "FEDMOE_FLEET_TRACE_ROUND_S", 600.0, "FedScale trace: trace seconds per round"
    )
    secrets_file: str = setting(
        "FEDMOE_FLEET_SECRETS_FILE",
        "",
        "JSON map device id -> secret (`fedmoe devices add --secrets-file`, mode 0600): each "
        "device connects as itself (empty = every device uses the FEDMOE_MQTT_* account)",
    )

    def __post_init__(self) -> None:
        if self.first < 0 or self.count < 0:
            raise SettingsError("FEDMOE_FLEET_FIRST and FEDMOE_FLEET_COUNT must be >= 0")
        if self.stop_after_round < 0:
            raise SettingsError("FEDMOE_FLEET_STOP_AFTER_ROUND must be >= 0")
        for env, value in (
            ("FEDMOE_FLEET_RESEND_S", self.resend_s),
            ("FEDMOE_FLEET_MODEL_WAIT_S", self.model_wait_s),
        ):
            if not value > 0:
                raise SettingsError(f"{env} must be > 0")
        if self.max_resends < 0:
            raise SettingsError("FEDMOE_FLEET_MAX_RESENDS must be >= 0")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise SettingsError("FEDMOE_FLEET_DROP_PROB must be in [0, 1]")
        if self.drain_s < 0:
            raise SettingsError("FEDMOE_FLEET_DRAIN_S must be >= 0")
        if self.reconnect_s < 0:
            raise SettingsError("FEDMOE_FLEET_RECONNECT_S must be >= 0")
        if self.client_prefix and not valid_segment(f"{self.client_prefix}dev-00000"):
            raise SettingsError(
                f"FEDMOE_FLEET_CLIENT_PREFIX: {self.client_prefix!r} makes invalid client ids"
            )
        if not self.trace_round_s > 0:
            raise SettingsError("FEDMOE_FLEET_TRACE_ROUND_S must be > 0")
        if self.session_expiry_s < 1 or self.keepalive_s < 1:
            raise SettingsError("FEDMOE_FLEET_SESSION_EXPIRY_S and _KEEPALIVE_S must be >= 1")

    def device_range(self, num_devices: int) -> range:
        """The scenario device indices this process runs."""
        count = self.count or max(num_devices - self.first, 0)
        if self.first + count > num_devices or count == 0:
            raise SettingsError(
                f"FEDMOE_FLEET_FIRST/COUNT: devices [{self.first}, {self.first + count}) are "
                f"not within the scenario's {num_devices}"
            )
        return range(self.first, self.first + count)
