"""`GatewaySettings` (`FEDMOE_GATEWAY_*`); broker and runtime knobs come from their own classes.

Operating note (measured here with Mosquitto 2.0.11): a gateway's persistent session keeps its
place in the shared subscription while it is offline, and Mosquitto keeps handing it its share
of the devices' messages, queued until it comes back. With two gateways in one share group and
one of them gone, half the updates waited in the absent one's queue. So give every instance a
stable client id and bring it back after a crash; to retire an instance for good, let its
session expire (`session_expiry_s`) or connect once with its client id and a clean start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from schemas.topics import valid_segment
from services.gateway.ratelimit import RateLimit


@dataclass(frozen=True)
class GatewaySettings:
    """One gateway instance: its MQTT identity and how it shares the load with others."""

    client_id: str = setting(
        "FEDMOE_GATEWAY_CLIENT_ID",
        "gateway-1",
        "MQTT client id: unique per gateway instance and stable across restarts "
        "(the persistent session, with its unacknowledged messages, is bound to it)",
    )
    group_id: str = setting(
        "FEDMOE_GATEWAY_GROUP_ID", "gateway", "Kafka consumer group of the Kafka→MQTT side"
    )
    share_group: str = setting(
        "FEDMOE_GATEWAY_SHARE_GROUP",
        "gateway",
        "MQTT 5 shared-subscription group ($share/<group>/...) the gateways split devices over",
    )
    shared_subscription: bool = setting(
        "FEDMOE_GATEWAY_SHARED_SUBSCRIPTION",
        True,
        "subscribe through $share/<group>/ (off: every gateway gets every message)",
    )
    session_expiry_s: int = setting(
        "FEDMOE_GATEWAY_SESSION_EXPIRY_S",
        3600,
        "how long the broker keeps the gateway's session (and its queued messages) offline",
    )
    window: int = setting(
        "FEDMOE_GATEWAY_WINDOW",
        64,
        "MQTT messages in flight before their PUBACK (Receive Maximum; Kafka acks awaited)",
    )
    keepalive_s: int = setting("FEDMOE_GATEWAY_KEEPALIVE_S", 30, "MQTT keepalive, seconds")
    reconnect_max_s: float = setting(
        "FEDMOE_GATEWAY_RECONNECT_MAX_S", 10.0, "cap of the MQTT reconnect backoff, seconds"
    )

    rate_per_s: float = setting(
        "FEDMOE_GATEWAY_RATE_PER_S",
        5.0,
        "per-device token bucket: messages per second a device may send, sustained (0: off)",
    )
    burst: float = setting(
        "FEDMOE_GATEWAY_BURST",
        20.0,
        "per-device token bucket: messages a device may send at once after a quiet spell",
    )
    drop_letter_interval_s: float = setting(
        "FEDMOE_GATEWAY_DROP_LETTER_INTERVAL_S",
        10.0,
        "of a device's rate-limited messages, one dead letter per this many seconds",
    )

    def __post_init__(self) -> None:
        if not valid_segment(self.client_id):
            raise SettingsError(f"FEDMOE_GATEWAY_CLIENT_ID: {self.client_id!r} is not a valid id")
        if not self.group_id:
            raise SettingsError("FEDMOE_GATEWAY_GROUP_ID must not be empty")
        if not valid_segment(self.share_group):
            raise SettingsError(
                f"FEDMOE_GATEWAY_SHARE_GROUP: {self.share_group!r} is not a valid name"
            )
        if self.session_expiry_s < 1:
            raise SettingsError("FEDMOE_GATEWAY_SESSION_EXPIRY_S must be >= 1")
        if not 1 <= self.window <= 65535:
            raise SettingsError("FEDMOE_GATEWAY_WINDOW must be 1..65535")
        if self.keepalive_s < 1:
            raise SettingsError("FEDMOE_GATEWAY_KEEPALIVE_S must be >= 1")
        if not self.reconnect_max_s > 0:
            raise SettingsError("FEDMOE_GATEWAY_RECONNECT_MAX_S must be > 0")
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s >= 0):
            raise SettingsError("FEDMOE_GATEWAY_RATE_PER_S must be finite and >= 0")
        try:
            self.rate_limit()
        except ValueError as exc:
            raise SettingsError(f"FEDMOE_GATEWAY_BURST / _DROP_LETTER_INTERVAL_S: {exc}") from exc

    def rate_limit(self) -> RateLimit | None:
        """The per-device token bucket, or None when rate limiting is off (rate 0)."""
        if self.rate_per_s == 0:
            return None
        return RateLimit(self.rate_per_s, self.burst, self.drop_letter_interval_s)
