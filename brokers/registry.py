"""The device registry: every MQTT account of a deployment, and the Mosquitto files made from it.

A registry is a directory (`FEDMOE_DEVICE_REGISTRY`) holding

- `accounts.json` (0600): the MQTT root, then per account its role, when it was added or
  revoked, and the hash of its secret, never the secret itself;
- `mosquitto.passwd` (0600): `name:$7$<iterations>$<salt>$<hash>` lines, Mosquitto 2's own
  PBKDF2-SHA512 format (checked against `mosquitto_passwd`), for active accounts only;
- `mosquitto.acl`: the rights of every role (`render_acl`), deny by default;
- `mosquitto.pid`: written by a local Mosquitto that uses this registry (`pid_file`), so
  `reload_broker` can send it SIGHUP.

Identity is the MQTT username: a device's username is its device id, and a per-account random
secret is its password (why not X.509 client certificates: docs/security.md). A secret is
returned once by `add` for the device to keep. Mosquitto re-reads the password and ACL files
on SIGHUP and then disconnects every client whose credentials no longer check (measured on
2.0.11: a revoked device's live session was cut 0.08 s after SIGHUP; the others stayed), so
revocation needs no restart.

Roles (`ROLES`), with `{root}` the deployment's MQTT root:

- `device`: publishes only `{root}/{self}/telemetry|status|update`, reads only
  `{root}/{self}/#`, `{root}/model/#`, `{root}/gate/#` (the gate rows of schema 1.0) and
  `{root}/round`;
- `gateway`: reads every device's uplink, publishes assignments, acks, model, gate and round;
- `observer`: reads everything under `{root}` and `$SYS`, publishes nothing (`fedmoe record`,
  monitoring);
- `replayer`: publishes any device's telemetry, status and update, reads the round and the
  assignments (`fedmoe replay`, `--follow-rounds`).

Writes are atomic (temporary file + rename) under an exclusive lock on `.lock`, so two
`fedmoe devices` commands at once cannot lose an account.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import signal
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from brokers.errors import RegistryError
from schemas.topics import RESERVED_DEVICE_IDS, valid_segment

ROLES: Final = ("device", "gateway", "observer", "replayer")
ACCOUNTS_FILE: Final = "accounts.json"
PASSWD_FILE: Final = "mosquitto.passwd"
ACL_FILE: Final = "mosquitto.acl"
PID_FILE: Final = "mosquitto.pid"
_LOCK_FILE: Final = ".lock"
_FORMAT: Final = 1

# Mosquitto 2's defaults for `$7$` (mosquitto_passwd -H sha512-pbkdf2): 101 iterations, a
# 12-byte salt, a 64-byte SHA-512 digest. The secret is 32 random bytes, so the low iteration
# count costs no real strength and keeps the broker's check per CONNECT cheap.
PBKDF2_ITERATIONS: Final = 101
_SALT_BYTES: Final = 12


def new_secret() -> str:
    """A fresh random secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_secret(
    secret: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Mosquitto's `$7$` hash of `secret`: `$7$<iterations>$<b64 salt>$<b64 sha512-pbkdf2>`."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_secret(secret: str, encoded: str) -> bool:
    """Whether `secret` matches a `$7$` hash (as Mosquitto checks it)."""
    try:
        _, seven, iterations, salt, digest = encoded.split("$")
        if seven != "7":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.pbkdf2_hmac(
            "sha512", secret.encode(), base64.b64decode(salt, validate=True), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def check_account_name(name: str) -> None:
    """A `RegistryError` unless `name` can be a username and a topic segment."""
    if not valid_segment(name) or name in RESERVED_DEVICE_IDS:
        raise RegistryError(
            f"account {name!r}: must be 1-64 of [A-Za-z0-9_.-] and not one of "
            f"{sorted(RESERVED_DEVICE_IDS)} (it is the MQTT username and a topic segment)"
        )


@dataclass(frozen=True, slots=True)
class Account:
    """One registered account (no secret: only its hash)."""

    name: str
    role: str
    added: str  # ISO 8601 UTC
    revoked: str | None
    secret_hash: str

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked is None

    def public(self) -> dict[str, Any]:
        """What `fedmoe devices list` shows (the hash stays in the registry)."""
        return {"name": self.name, "role": self.role, "added": self.added, "revoked": self.revoked}


def _role_rules(root: str, account: Account) -> list[str]:
    """The ACL lines of a non-device account."""
    lines = [f"# {account.name}: {account.role}", f"user {account.name}"]
    if account.role == "gateway":
        lines += [f"topic read {root}/+/{kind}" for kind in ("telemetry", "status", "update")]
        lines += [f"topic write {root}/+/{kind}" for kind in ("assignment", "ack")]
        lines += [f"topic write {root}/model/#", f"topic write {root}/gate/#"]
        lines += [f"topic write {root}/round"]
    elif account.role == "observer":
        # Everything of the deployment, and the broker's own counters (monitoring, soak).
        lines += [f"topic read {root}/#", "topic read $SYS/#"]
    elif account.role == "replayer":
        lines += [f"topic write {root}/+/{kind}" for kind in ("telemetry", "status", "update")]
        # `fedmoe replay --follow-rounds` paces itself by the live rounds and assignments.
        lines += [f"topic read {root}/round", f"topic read {root}/+/assignment"]
    # The device patterns below apply to every username: a service account must not be able
    # to act as a device of its own name.
    lines.append(f"topic deny {root}/{account.name}/#")
    return lines


def render_acl(root: str, accounts: Iterable[Account]) -> str:
    """Mosquitto's ACL file for the active `accounts` under MQTT root `root`."""
    if not valid_segment(root):
        raise RegistryError(f"MQTT root {root!r} is not a valid topic segment")
    lines = [
        "# GENERATED by `fedmoe devices` (brokers/registry.py) from accounts.json: do not edit.",
        "# Deny by default: a client may do only what a line here grants. Anonymous clients",
        "# are refused (allow_anonymous false); revoked accounts are not in mosquitto.passwd.",
        "",
    ]
    for account in sorted(accounts, key=lambda a: a.name):
        if account.active and account.role != "device":
            lines += [*_role_rules(root, account), ""]
    lines += [
        "# Devices: username = device id. Each publishes only its own uplink and reads only",
        "# its own downlink and the shared, retained model, gate rows and round.",
        f"pattern write {root}/%u/telemetry",
        f"pattern write {root}/%u/status",
        f"pattern write {root}/%u/update",
        f"pattern read {root}/%u/#",
        f"pattern read {root}/model/#",
        f"pattern read {root}/gate/#",
        f"pattern read {root}/round",
    ]
    return "\n".join(lines) + "\n"


def render_passwd(accounts: Iterable[Account]) -> str:
    """Mosquitto's password file: the active accounts' hashes."""
    return "".join(
        f"{a.name}:{a.secret_hash}\n" for a in sorted(accounts, key=lambda a: a.name) if a.active
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_secrets_file(path: Path, new: Mapping[str, str]) -> None:
    """Merge `new` (account → secret) into the JSON map at `path`, mode 0600.

    For simulators and service accounts only: a real device keeps its own secret.
    """
    current: dict[str, str] = {}
    if path.exists():
        current = read_secrets_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps({**current, **new}, indent=1, sort_keys=True) + "\n", 0o600)


def read_secrets_file(path: Path) -> dict[str, str]:
    """The account → secret map written by `write_secrets_file`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"secrets file {path}: cannot read it: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise RegistryError(f"secrets file {path}: not a JSON object of account -> secret")
    return data


class DeviceRegistry:
    """The registry directory `path` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def passwd_path(self) -> Path:
        """Mosquitto's `password_file`."""
        return self.path / PASSWD_FILE

    @property
    def acl_path(self) -> Path:
        """Mosquitto's `acl_file`."""
        return self.path / ACL_FILE

    @property
    def pid_path(self) -> Path:
        """Where a local Mosquitto using this registry writes its pid (`pid_file`)."""
        return self.path / PID_FILE

    @classmethod
    def create(cls, path: Path, mqtt_root: str) -> DeviceRegistry:
        """Open the registry at `path`, creating an empty one for `mqtt_root` if absent; an
        existing one must have been made for the same root."""
        if not valid_segment(mqtt_root):
            raise RegistryError(f"MQTT root {mqtt_root!r} is not a valid topic segment")
        registry = cls(path)
        with registry._locked():
            if (registry.path / ACCOUNTS_FILE).exists():
                root, _ = registry._load()
                if root != mqtt_root:
                    raise RegistryError(
                        f"registry {path} is for MQTT root {root!r}, not {mqtt_root!r}"
                    )
            else:
                registry._save(mqtt_root, {})
        return registry

    @property
    def mqtt_root(self) -> str:
        """The MQTT root its ACL is written for."""
        root, _ = self._load()
        return root

    def accounts(self) -> list[Account]:
        """Every account, revoked ones included, by name."""
        _, accounts = self._load()
        return sorted(accounts.values(), key=lambda a: a.name)

    def add(
        self, names: Sequence[str], role: str = "device", *, rotate: bool = False
    ) -> dict[str, str]:
        """Register `names` with `role`; each gets a new secret, returned (and kept nowhere).

        A revoked account may be added again (new secret). An active one is an error unless
        `rotate`, which replaces its secret (its live sessions are cut at the next reload).
        """
        if role not in ROLES:
            raise RegistryError(f"role {role!r} is not one of {ROLES}")
        if len(set(names)) != len(names):
            raise RegistryError("an account is named twice")
        for name in names:
            check_account_name(name)
        created: dict[str, str] = {}
        with self._locked():
            root, accounts = self._load()
            for name in names:
                old = accounts.get(name)
                if old is not None and old.active and not rotate:
                    raise RegistryError(
                        f"account {name!r} is already registered ({old.role}); revoke it "
                        "first, or rotate its secret"
                    )
                if old is not None and old.active and old.role != role:
                    raise RegistryError(f"account {name!r} is a {old.role}, not a {role}")
            for name in names:
                secret = new_secret()
                accounts[name] = Account(name, role, _now(), None, hash_secret(secret))
                created[name] = secret
            self._save(root, accounts)
        return created

    def revoke(self, names: Sequence[str]) -> list[str]:
        """Revoke `names` (they stay listed as revoked); the names that were active."""
        with self._locked():
            root, accounts = self._load()
            unknown = [n for n in names if n not in accounts]
            if unknown:
                raise RegistryError(f"not registered: {', '.join(unknown)}")
            changed = [n for n in names if accounts[n].active]
            now = _now()
            for name in changed:
                old = accounts[name]
                accounts[name] = Account(old.name, old.role, old.added, now, old.secret_hash)
            if changed:
                self._save(root, accounts)
        return changed

    def reload_broker(self) -> int | None:
        """SIGHUP the local Mosquitto named by `mosquitto.pid` (it re-reads the password and
        ACL files and cuts sessions that no longer authenticate); its pid, or None when no
        live Mosquitto wrote one (a broker elsewhere: reload it there, see docs/security.md)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        # A stale pid may belong to another program by now: signal only a mosquitto.
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        if comm != "mosquitto":
            return None
        try:
            os.kill(pid, signal.SIGHUP)
        except (ProcessLookupError, PermissionError):
            return None
        return pid

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = (self.path / _LOCK_FILE).open("a")
        except OSError as exc:
            raise RegistryError(f"registry {self.path}: {exc}") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _load(self) -> tuple[str, dict[str, Account]]:
        path = self.path / ACCOUNTS_FILE
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT}")
            accounts = {
                name: Account(name, a["role"], a["added"], a.get("revoked"), a["secret_hash"])
                for name, a in data["accounts"].items()
            }
            return str(data["mqtt_root"]), accounts
        except FileNotFoundError as exc:
            raise RegistryError(
                f"no device registry at {self.path} (create it with `fedmoe devices add`)"
            ) from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(f"registry {path}: unreadable: {exc!r}") from exc

    def _save(self, root: str, accounts: Mapping[str, Account]) -> None:
        data = {
            "format": _FORMAT,
            "mqtt_root": root,
            "accounts": {
                a.name: {
                    "role": a.role,
                    "added": a.added,
                    "revoked": a.revoked,
                    "secret_hash": a.secret_hash,
                }
                for a in sorted(accounts.values(), key=lambda a: a.name)
            },
        }
        values = list(accounts.values())
        try:
            # Password and ACL first, the record last: a crash in between leaves the broker's
            # files ahead of the record, never a revoked account still in the password file.
            _write_atomic(self.passwd_path, render_passwd(values), 0o600)
            _write_atomic(self.acl_path, render_acl(root, values), 0o644)
            _write_atomic(self.path / ACCOUNTS_FILE, json.dumps(data, indent=1) + "\n", 0o600)
        except OSError as exc:
            raise RegistryError(f"registry {self.path}: cannot write: {exc}") from exc
