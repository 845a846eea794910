"""`fedmoe certs`: the deployment's local CA and the brokers' TLS certificate.

    fedmoe certs --certs-dir certs --certs-hosts mosquitto,kafka,localhost,127.0.0.1

writes `ca.crt`/`ca.key` (kept when present, so certificates issued earlier stay valid),
`broker.crt`/`broker.key` for every listed host name or address, and `broker.pem` (key and
certificate in one, Kafka's PEM keystore). Devices and services get only `ca.crt`
(`FEDMOE_MQTT_CA_FILE`, `FEDMOE_KAFKA_CA_FILE`). With `--kafka-password-file` it also
writes a random password for the Kafka SCRAM user there, unless that file exists.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brokers.registry import new_secret
from brokers.tls import DEFAULT_HOSTS, TlsError, create_certificates
from fedmoe.commands.devices import write_secrets_text
from fedmoe.errors import SettingsError
from fedmoe.settings import add_arguments, from_args, setting


@dataclass(frozen=True)
class CertsSettings:
    """Where the certificates go and whom the broker certificate names."""

    certs_dir: str = setting("FEDMOE_CERTS_DIR", "certs", "directory of the CA and certificates")
    certs_hosts: str = setting(
        "FEDMOE_CERTS_HOSTS",
        ",".join(DEFAULT_HOSTS),
        "comma-separated host names and IP addresses the broker certificate is valid for",
    )
    kafka_password_file: str = setting(
        "FEDMOE_CERTS_KAFKA_PASSWORD_FILE",
        "",
        "also create a random Kafka SCRAM password in this file (0600) unless it exists",
    )

    def hosts(self) -> list[str]:
        """`certs_hosts` as a list."""
        return [h.strip() for h in self.certs_hosts.split(",") if h.strip()]

    def __post_init__(self) -> None:
        if not self.certs_dir:
            raise SettingsError("FEDMOE_CERTS_DIR must name a directory")
        if not self.hosts():
            raise SettingsError("FEDMOE_CERTS_HOSTS: name at least one host")


def build_parser() -> argparse.ArgumentParser:
    """`fedmoe certs` flags."""
    parser = argparse.ArgumentParser(
        prog="fedmoe certs", description="a local CA and the brokers' TLS certificate"
    )
    add_arguments(parser, CertsSettings)
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe certs`."""
    args = build_parser().parse_args(list(argv))
    try:
        settings = from_args(CertsSettings, args, os.environ)
        files = create_certificates(Path(settings.certs_dir), settings.hosts())
        if settings.kafka_password_file and not Path(settings.kafka_password_file).exists():
            write_secrets_text(Path(settings.kafka_password_file), new_secret())
    except SettingsError as exc:
        print(f"fedmoe certs: {exc}", file=sys.stderr)
        return 2
    except (TlsError, OSError) as exc:
        print(f"fedmoe certs: {exc}", file=sys.stderr)
        return 1
    print(
        f"fedmoe certs: CA {files.ca_file}, broker certificate {files.cert_file} for "
        f"{', '.join(settings.hosts())}; give devices and services only {files.ca_file.name}"
    )
    return 0
