"""`RecordSettings` (`FEDMOE_RECORD_*`) and `ReplaySettings` (`FEDMOE_REPLAY_*`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.errors import SettingsError
from fedmoe.settings import setting

# Device-side MQTT topics recorded by default, and the ones that may be added.
DEVICE_KINDS = ("telemetry", "status", "update")
OPTIONAL_KINDS = ("assignment", "ack", "round", "model", "gate")


def split(value: str) -> tuple[str, ...]:
    """A comma-separated list, empty entries dropped."""
    return tuple(x.strip() for x in value.split(",") if x.strip())


@dataclass(frozen=True)
class RecordSettings:
    """What `fedmoe record` taps and how it writes."""

    mqtt: str = setting(
        "FEDMOE_RECORD_MQTT",
        ",".join(DEVICE_KINDS),
        "MQTT topic kinds to record: telemetry,status,update and optionally "
        "assignment,ack,round,model,gate (empty = no MQTT)",
    )
    kafka: str = setting(
        "FEDMOE_RECORD_KAFKA",
        "",
        "Kafka topics to record, logical names (rounds,assignments,...) or full names",
    )
    kafka_from_beginning: bool = setting(
        "FEDMOE_RECORD_KAFKA_FROM_BEGINNING",
        False,
        "read the Kafka topics from their beginning (default: from now on)",
    )
    duration_s: float = setting(
        "FEDMOE_RECORD_DURATION_S", 0.0, "stop after this long, seconds (0 = at SIGINT/SIGTERM)"
    )
    group_records: int = setting(
        "FEDMOE_RECORD_GROUP_RECORDS", 10_000, "records per Parquet row group (at most)"
    )
    group_mb: float = setting(
        "FEDMOE_RECORD_GROUP_MB", 16.0, "buffered MiB that make a row group (the memory bound)"
    )
    flush_s: float = setting(
        "FEDMOE_RECORD_FLUSH_S", 5.0, "write a row group at least this often, seconds"
    )
    progress_s: float = setting(
        "FEDMOE_RECORD_PROGRESS_S", 5.0, "progress line interval, seconds (0 = none)"
    )
    client_id: str = setting(
        "FEDMOE_RECORD_CLIENT_ID", "fedmoe-recorder", "MQTT client id and Kafka client id"
    )

    def __post_init__(self) -> None:
        unknown = [k for k in split(self.mqtt) if k not in DEVICE_KINDS + OPTIONAL_KINDS]
        if unknown:
            raise SettingsError(f"FEDMOE_RECORD_MQTT: unknown topic kinds {unknown}")
        if not split(self.mqtt) and not split(self.kafka):
            raise SettingsError("FEDMOE_RECORD_MQTT and FEDMOE_RECORD_KAFKA are both empty")
        if self.duration_s < 0 or self.progress_s < 0 or not self.flush_s > 0:
            raise SettingsError("FEDMOE_RECORD_DURATION_S/PROGRESS_S >= 0, FLUSH_S > 0")
        if self.group_records < 1 or not self.group_mb > 0:
            raise SettingsError("FEDMOE_RECORD_GROUP_RECORDS >= 1 and GROUP_MB > 0")


@dataclass(frozen=True)
class ReplaySettings:
    """How `fedmoe replay` publishes a recording back."""

    speed: str = setting("FEDMOE_REPLAY_SPEED", "1", "time factor (10 = ten times faster) or 'max'")
    loop: int = setting("FEDMOE_REPLAY_LOOP", 1, "play the recording this many times")
    devices: str = setting("FEDMOE_REPLAY_DEVICES", "", "only these device ids (comma list)")
    types: str = setting(
        "FEDMOE_REPLAY_TYPES",
        "telemetry,status,update",
        "only these message types (envelope type: telemetry,status,update,...; 'all')",
    )
    from_s: float = setting(
        "FEDMOE_REPLAY_FROM_S", 0.0, "skip records before this many seconds into the recording"
    )
    to_s: float = setting(
        "FEDMOE_REPLAY_TO_S", 0.0, "stop at this many seconds into the recording (0 = the end)"
    )
    rewrite: bool = setting(
        "FEDMOE_REPLAY_REWRITE", False, "fresh message ids and timestamps (no dedup as originals)"
    )
    follow_rounds: bool = setting(
        "FEDMOE_REPLAY_FOLLOW_ROUNDS",
        False,
        "round-synchronous: recorded round k goes out when the live system closes its round",
    )
    window: int = setting(
        "FEDMOE_REPLAY_WINDOW", 256, "publishes in flight at once (QoS 1 acks / Kafka acks)"
    )
    idle_timeout_s: float = setting(
        "FEDMOE_REPLAY_IDLE_TIMEOUT_S",
        120.0,
        "follow-rounds: give up when the live system closes no round for this long, seconds",
    )
    report: str = setting(
        "FEDMOE_REPLAY_REPORT", "", "write the replay's report (JSON) to this file"
    )
    client_id: str = setting("FEDMOE_REPLAY_CLIENT_ID", "fedmoe-replay", "MQTT / Kafka client id")

    def __post_init__(self) -> None:
        self.speed_factor()
        if self.loop < 1 or self.window < 1:
            raise SettingsError("FEDMOE_REPLAY_LOOP and FEDMOE_REPLAY_WINDOW must be >= 1")
        if self.from_s < 0 or self.to_s < 0 or (self.to_s and self.to_s <= self.from_s):
            raise SettingsError("FEDMOE_REPLAY_FROM_S/TO_S: need 0 <= from < to (to 0 = end)")
        if not self.idle_timeout_s > 0:
            raise SettingsError("FEDMOE_REPLAY_IDLE_TIMEOUT_S must be > 0")
        if self.follow_rounds and self.speed_factor() is None:
            raise SettingsError("--follow-rounds needs a numeric --speed (it keeps round timing)")

    def speed_factor(self) -> float | None:
        """The speed as a factor; None for 'max'."""
        if self.speed.strip().lower() == "max":
            return None
        try:
            value = float(self.speed)
        except ValueError:
            raise SettingsError(
                f"FEDMOE_REPLAY_SPEED: {self.speed!r} is not a number or max"
            ) from None
        if not value > 0:
            raise SettingsError(f"FEDMOE_REPLAY_SPEED: {self.speed!r} must be > 0")
        return value
