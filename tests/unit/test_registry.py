"""The device registry: Mosquitto's `$7$` hash format, the ACL each role gets, add / revoke /
rotate, and the files Mosquitto reads."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from brokers.errors import RegistryError
from brokers.registry import (
    PBKDF2_ITERATIONS,
    DeviceRegistry,
    check_secret,
    hash_secret,
    read_secrets_file,
    render_acl,
    write_secrets_file,
)


def test_hash_is_mosquittos_pbkdf2_sha512_format() -> None:
    salt = bytes(range(12))
    encoded = hash_secret("s3cret", salt=salt)
    empty, seven, iterations, b64_salt, b64_hash = encoded.split("$")
    assert (empty, seven, int(iterations)) == ("", "7", PBKDF2_ITERATIONS)
    assert base64.b64decode(b64_salt) == salt
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, PBKDF2_ITERATIONS)
    assert base64.b64decode(b64_hash) == expected
    assert check_secret("s3cret", encoded)
    assert not check_secret("s3cret!", encoded)
    assert not check_secret("s3cret", "$6$abc$def")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="no mosquitto_passwd")
def test_check_accepts_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(path), "alice", "pw-1"], check=True)
    name, encoded = path.read_text().strip().split(":", 1)
    assert name == "alice"
    assert check_secret("pw-1", encoded)
    assert not check_secret("pw-2", encoded)


def test_add_revoke_rotate_and_the_broker_files(tmp_path: Path) -> None:
    registry = DeviceRegistry.create(tmp_path / "reg", "fleet")
    secrets = registry.add(["dev-00000", "dev-00001"])
    gateway = registry.add(["gateway-1"], role="gateway")
    assert set(secrets) == {"dev-00000", "dev-00001"}
    assert len(set(secrets.values())) == 2
    passwd = dict(line.split(":", 1) for line in registry.passwd_path.read_text().splitlines())
    assert set(passwd) == {"dev-00000", "dev-00001", "gateway-1"}
    assert check_secret(secrets["dev-00000"], passwd["dev-00000"])
    assert check_secret(gateway["gateway-1"], passwd["gateway-1"])
    # Secrets are never stored, only their hashes; the broker's files are private.
    record = (registry.path / "accounts.json").read_text()
    assert secrets["dev-00000"] not in record
    assert stat.S_IMODE(registry.passwd_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((registry.path / "accounts.json").stat().st_mode) == 0o600

    with pytest.raises(RegistryError, match="already registered"):
        registry.add(["dev-00000"])
    assert registry.revoke(["dev-00000"]) == ["dev-00000"]
    assert registry.revoke(["dev-00000"]) == []  # already revoked
    assert "dev-00000" not in registry.passwd_path.read_text()
    listed = {a.name: a for a in registry.accounts()}
    assert listed["dev-00000"].revoked is not None
    assert listed["gateway-1"].role == "gateway"
    with pytest.raises(RegistryError, match="not registered"):
        registry.revoke(["dev-99999"])

    again = registry.add(["dev-00000"])  # a revoked device may come back, with a new secret
    assert again["dev-00000"] != secrets["dev-00000"]
    rotated = registry.add(["dev-00001"], rotate=True)
    encoded = dict(line.split(":", 1) for line in registry.passwd_path.read_text().splitlines())[
        "dev-00001"
    ]
    assert check_secret(rotated["dev-00001"], encoded)
    assert not check_secret(secrets["dev-00001"], encoded)


@pytest.mark.parametrize("name", ["model", "gate", "a/b", "dev+1", "#", "", "x" * 65, "a b"])
def test_bad_account_names(tmp_path: Path, name: str) -> None:
    registry = DeviceRegistry.create(tmp_path, "fleet")
    with pytest.raises(RegistryError):
        registry.add([name])
    assert registry.accounts() == []


def test_bad_role_and_root(tmp_path: Path) -> None:
    registry = DeviceRegistry.create(tmp_path, "fleet")
    with pytest.raises(RegistryError, match="role"):
        registry.add(["x"], role="admin")
    with pytest.raises(RegistryError, match="not 'other'"):
        DeviceRegistry.create(tmp_path, "other")
    with pytest.raises(RegistryError, match="no device registry"):
        DeviceRegistry(tmp_path / "nowhere").accounts()


def _acl(tmp_path: Path) -> list[str]:
    registry = DeviceRegistry.create(tmp_path, "fl")
    registry.add(["gw"], role="gateway")
    registry.add(["rec"], role="observer")
    registry.add(["rep"], role="replayer")
    registry.add(["dev-1", "old"])
    registry.revoke(["old"])
    return registry.acl_path.read_text().splitlines()


def _block(lines: list[str], user: str) -> list[str]:
    start = lines.index(f"user {user}")
    end = next((i for i in range(start + 1, len(lines)) if not lines[i]), len(lines))
    return lines[start + 1 : end]


def test_acl_grants_each_role_only_its_topics(tmp_path: Path) -> None:
    lines = _acl(tmp_path)
    assert _block(lines, "gw") == [
        "topic read fl/+/telemetry",
        "topic read fl/+/status",
        "topic read fl/+/update",
        "topic write fl/+/assignment",
        "topic write fl/+/ack",
        "topic write fl/model/#",
        "topic write fl/gate/#",
        "topic write fl/round",
        "topic deny fl/gw/#",
    ]
    assert _block(lines, "rec") == ["topic read fl/#", "topic read $SYS/#", "topic deny fl/rec/#"]
    assert _block(lines, "rep") == [
        "topic write fl/+/telemetry",
        "topic write fl/+/status",
        "topic write fl/+/update",
        "topic read fl/round",
        "topic read fl/+/assignment",
        "topic deny fl/rep/#",
    ]
    patterns = [line for line in lines if line.startswith("pattern")]
    assert patterns == [
        "pattern write fl/%u/telemetry",
        "pattern write fl/%u/status",
        "pattern write fl/%u/update",
        "pattern read fl/%u/#",
        "pattern read fl/model/#",
        "pattern read fl/gate/#",
        "pattern read fl/round",
    ]
    # No blanket grant anywhere: deny by default; devices have no user block at all.
    assert not [line for line in lines if line.startswith("topic") and line.endswith(" #")]
    assert "user dev-1" not in lines
    assert "user old" not in lines


def test_render_acl_checks_the_root() -> None:
    with pytest.raises(RegistryError):
        render_acl("a/b", [])


def test_secrets_file_merges_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "s" / "secrets.json"
    write_secrets_file(path, {"a": "1"})
    write_secrets_file(path, {"b": "2"})
    assert read_secrets_file(path) == {"a": "1", "b": "2"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(RegistryError, match="account -> secret"):
        read_secrets_file(path)


def test_reload_signals_only_a_live_mosquitto(tmp_path: Path) -> None:
    registry = DeviceRegistry.create(tmp_path, "fleet")
    assert registry.reload_broker() is None  # no pid file
    registry.pid_path.write_text("1\n")  # pid 1 is not a mosquitto here
    assert registry.reload_broker() is None
