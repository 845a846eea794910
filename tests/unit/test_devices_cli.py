"""`fedmoe devices` and `fedmoe certs` as a user runs them, and the demo's provisioning."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from brokers.registry import DeviceRegistry, check_secret, read_secrets_file
from fedmoe.commands import certs, devices
from fedmoe.demo.accounts import provision_demo


def _passwd(registry: Path) -> dict[str, str]:
    lines = (registry / "mosquitto.passwd").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines)


def test_add_prints_each_secret_once_and_keeps_only_hashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "reg"
    assert devices.main(["add", "dev-1", "dev-2", "--registry", str(reg), "--no-reload"]) == 0
    out = capsys.readouterr()
    printed = dict(line.split(" ", 1) for line in out.out.splitlines())
    assert set(printed) == {"dev-1", "dev-2"}
    assert "shown this once" in out.err
    hashes = _passwd(reg)
    assert all(check_secret(printed[n], hashes[n]) for n in printed)
    assert not any(secret in (reg / "accounts.json").read_text() for secret in printed.values())

    assert devices.main(["revoke", "dev-1", "--registry", str(reg), "--no-reload"]) == 0
    assert set(_passwd(reg)) == {"dev-2"}
    capsys.readouterr()
    assert devices.main(["list", "--json", "--registry", str(reg)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["mqtt_root"] == "fleet"
    assert {a["name"]: a["revoked"] is not None for a in listed["accounts"]} == {
        "dev-1": True,
        "dev-2": False,
    }


def test_secrets_to_files_and_the_scenario_ids(tmp_path: Path) -> None:
    reg, secrets, gw = tmp_path / "reg", tmp_path / "s.json", tmp_path / "gw.secret"
    args = ["--registry", str(reg), "--no-reload"]
    assert devices.main(["add", "--count", "3", "--secrets-file", str(secrets), *args]) == 0
    assert sorted(read_secrets_file(secrets)) == ["dev-00000", "dev-00001", "dev-00002"]
    assert devices.main(["add", "gw", "--role", "gateway", "--password-file", str(gw), *args]) == 0
    assert stat.S_IMODE(gw.stat().st_mode) == 0o600
    assert check_secret(gw.read_text().strip(), _passwd(reg)["gw"])
    assert "user gw" in (reg / "mosquitto.acl").read_text()


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["add"], 2),  # no account named
        (["add", "a", "b", "--password-file", "x"], 2),  # one secret file, one account
        (["add", "dev-1", "dev-1"], 1),  # named twice
        (["add", "a/b"], 1),  # not a topic segment
        (["revoke", "nobody"], 1),
    ],
)
def test_bad_usage(tmp_path: Path, argv: list[str], code: int) -> None:
    reg = tmp_path / "reg"
    DeviceRegistry.create(reg, "fleet")
    assert devices.main([*argv, "--registry", str(reg), "--no-reload"]) == code


def test_the_registry_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDMOE_DEVICE_REGISTRY", raising=False)
    assert devices.main(["list"]) == 2


def test_a_secret_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from fedmoe.commands import fleet

    with pytest.raises(SystemExit):
        fleet.build_parser().parse_args(["--mqtt-password", "hunter2"])
    err = capsys.readouterr().err
    assert "never taken from the command line" in err
    assert "hunter2" not in err


def test_certs_command(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    password = tmp_path / "kafka.password"
    argv = ["--certs-dir", str(out), "--certs-hosts", "mosquitto,10.1.2.3"]
    assert certs.main([*argv, "--kafka-password-file", str(password)]) == 0
    ca = (out / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate((out / "broker.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mosquitto"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert stat.S_IMODE((out / "broker.key").stat().st_mode) == 0o600
    first = password.read_text()
    # Again: the CA and the Kafka password are kept, the broker certificate is reissued.
    assert certs.main([*argv, "--kafka-password-file", str(password)]) == 0
    assert (out / "ca.crt").read_bytes() == ca
    assert password.read_text() == first
    assert certs.main(["--certs-dir", str(out), "--certs-hosts", ","]) == 2


def test_the_demo_provisions_every_mqtt_speaker(tmp_path: Path) -> None:
    registry = DeviceRegistry.create(tmp_path / "reg", "demo-1")
    envs = provision_demo(registry, tmp_path / "secrets", devices=4, record=True, monitor=True)
    roles = {a.name: a.role for a in registry.accounts()}
    assert roles == {
        "gateway-1": "gateway",
        "recorder": "observer",
        "monitor": "observer",
        **{f"dev-0000{i}": "device" for i in range(4)},
    }
    hashes = _passwd(registry.path)
    for name in ("gateway", "recorder", "monitor"):
        env = envs[name]
        secret = Path(env["FEDMOE_MQTT_PASSWORD_FILE"]).read_text().strip()
        assert check_secret(secret, hashes[env["FEDMOE_MQTT_USERNAME"]])
    fleet = read_secrets_file(Path(envs["fleet"]["FEDMOE_FLEET_SECRETS_FILE"]))
    assert all(check_secret(fleet[d], hashes[d]) for d in fleet)
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
