"""`fedmoe devices add|revoke|list`: the device registry (per-device MQTT accounts).

    fedmoe devices add dev-00042 [ID ...]          # prints "ID SECRET" once per device
    fedmoe devices add --count 30                   # the scenario's dev-00000 .. dev-00029
    fedmoe devices add gateway-1 --role gateway --password-file /run/secrets/gateway
    fedmoe devices add --count 2000 --secrets-file fleet-secrets.json   # a simulator's map
    fedmoe devices revoke dev-00042                 # refused at its next connect; session cut
    fedmoe devices list [--json]

The registry is a directory (`--registry` / `FEDMOE_DEVICE_REGISTRY`; see brokers/registry.py):
accounts with their role and the hash of their secret, plus the password and ACL files
Mosquitto reads. A secret is shown (or written to the file asked for) exactly once and never
kept in clear by the registry. After a change the local Mosquitto that uses this registry
(its pid file in the registry) gets SIGHUP: it re-reads both files, refuses revoked accounts
and cuts their live sessions without a restart. A broker elsewhere must be sent SIGHUP there
(`docker compose kill -s HUP mosquitto`). Secrets never come from or go to argv or a log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brokers.errors import RegistryError
from brokers.registry import ROLES, DeviceRegistry, write_secrets_file
from fedmoe.errors import SettingsError
from fedmoe.settings import add_arguments, from_args, setting
from schemas.topics import valid_segment


@dataclass(frozen=True)
class RegistrySettings:
    """Where the registry is (`FEDMOE_DEVICE_REGISTRY`) and the MQTT root of its ACL."""

    registry: str = setting(
        "FEDMOE_DEVICE_REGISTRY", "", "device registry directory (created on the first add)"
    )
    mqtt_root: str = setting(
        "FEDMOE_MQTT_ROOT", "fleet", "MQTT root the registry's ACL is written for"
    )

    def __post_init__(self) -> None:
        if not self.registry:
            raise SettingsError("FEDMOE_DEVICE_REGISTRY (--registry) is required")
        if not valid_segment(self.mqtt_root):
            raise SettingsError(f"FEDMOE_MQTT_ROOT: {self.mqtt_root!r} is not a valid name")


def build_parser() -> argparse.ArgumentParser:
    """`fedmoe devices` and its actions."""
    parser = argparse.ArgumentParser(
        prog="fedmoe devices", description="per-device MQTT accounts (the device registry)"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="register accounts; each secret is shown once")
    add.add_argument("names", nargs="*", help="account names (a device's name is its id)")
    add.add_argument("--count", type=int, default=0, help="also the scenario's N device ids")
    add.add_argument("--first", type=int, default=0, help="index of the first of --count")
    add.add_argument("--role", choices=ROLES, default="device", help="the accounts' role")
    add.add_argument("--rotate", action="store_true", help="give registered accounts a new secret")
    add.add_argument(
        "--secrets-file",
        type=Path,
        help="merge name -> secret into this JSON file (0600; for simulators and services) "
        "instead of printing the secrets",
    )
    add.add_argument(
        "--password-file",
        type=Path,
        help="write the one account's secret alone into this file (0600), e.g. for "
        "FEDMOE_MQTT_PASSWORD_FILE",
    )
    revoke = sub.add_parser("revoke", help="revoke accounts: refused at their next connect")
    revoke.add_argument("names", nargs="+", help="account names")
    listing = sub.add_parser("list", help="every account, its role and whether it is revoked")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    for action in (add, revoke, listing):
        add_arguments(action, RegistrySettings)
    for action in (add, revoke):
        action.add_argument(
            "--no-reload", action="store_true", help="do not SIGHUP the registry's local broker"
        )
    return parser


def _names(args: argparse.Namespace) -> list[str]:
    names = list(args.names)
    if args.count < 0 or args.first < 0:
        raise SettingsError("--count and --first must be >= 0")
    if args.count:
        from moe.scenario import device_id  # the scenario's ids; imported only when asked

        names += [device_id(i) for i in range(args.first, args.first + args.count)]
    if not names:
        raise SettingsError("name at least one account (or --count N)")
    return names


def _reload(registry: DeviceRegistry) -> None:
    pid = registry.reload_broker()
    if pid is not None:
        print(f"fedmoe devices: Mosquitto (pid {pid}) reloaded the registry", file=sys.stderr)
    else:
        print(
            "fedmoe devices: no local Mosquitto runs with this registry; send your broker "
            "SIGHUP to apply the change (docker: docker compose kill -s HUP mosquitto)",
            file=sys.stderr,
        )


def _add(registry: DeviceRegistry, args: argparse.Namespace) -> None:
    names = _names(args)
    if args.password_file is not None and len(names) != 1:
        raise SettingsError("--password-file holds the secret of exactly one account")
    secrets = registry.add(names, args.role, rotate=args.rotate)
    if args.password_file is not None:
        write_secrets_text(args.password_file, secrets[names[0]])
        print(f"fedmoe devices: {names[0]} ({args.role}); secret in {args.password_file}")
    elif args.secrets_file is not None:
        write_secrets_file(args.secrets_file, secrets)
        print(f"fedmoe devices: {len(names)} {args.role} accounts; secrets in {args.secrets_file}")
    else:
        print(
            "fedmoe devices: each secret is shown this once; the registry keeps only its hash",
            file=sys.stderr,
        )
        for name in names:
            print(f"{name} {secrets[name]}")


def write_secrets_text(path: Path, secret: str) -> None:
    """`secret` alone in `path`, created 0600 (replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _list(registry: DeviceRegistry, as_json: bool) -> None:
    accounts = [a.public() for a in registry.accounts()]
    if as_json:
        print(json.dumps({"mqtt_root": registry.mqtt_root, "accounts": accounts}, indent=1))
        return
    for a in accounts:
        state = f"revoked {a['revoked']}" if a["revoked"] else "active"
        print(f"{a['name']:<24} {a['role']:<9} added {a['added']}  {state}")


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe devices`: 0 done, 1 refused by the registry, 2 bad usage."""
    args = build_parser().parse_args(list(argv))
    try:
        settings = from_args(RegistrySettings, args, os.environ)
        path = Path(settings.registry)
        if args.action == "add":
            registry = DeviceRegistry.create(path, settings.mqtt_root)
            _add(registry, args)
        else:
            registry = DeviceRegistry(path)
            if args.action == "list":
                _list(registry, args.json)
                return 0
            revoked = registry.revoke(args.names)
            print(f"fedmoe devices: revoked {', '.join(revoked) or 'nothing new'}")
        if not args.no_reload:
            _reload(registry)
    except SettingsError as exc:
        print(f"fedmoe devices: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except (RegistryError, OSError) as exc:
        print(f"fedmoe devices: {exc}", file=sys.stderr)
        return 1
    return 0
