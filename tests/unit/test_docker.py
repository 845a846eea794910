"""docker/ cannot run here: parse the compose file and check it against the code.

Every container of the project's image runs a real `fedmoe` subcommand, and every FEDMOE_*
variable it is given is one that command reads (its `--help` lists each setting's env name).
The Mosquitto config in docker/ is the project's template, rendered for the compose network.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from brokers.mosquitto import render_config, security_block, tls_block
from brokers.tls import TlsFiles
from fedmoe import cli

DOCKER = Path(__file__).resolve().parents[2] / "docker"
IMAGE = "fedmoe-bus:latest"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _project_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose()["services"].items() if s.get("image") == IMAGE}


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code in (0, None), f"fedmoe {' '.join(argv)} --help failed"
    return out.getvalue()


def test_compose_runs_every_service_and_a_fleet() -> None:
    services = _project_services()
    commands = {tuple(s["command"]) for s in services.values()}
    for name in ("gateway", "profiler", "load-monitor", "matcher", "aggregator", "evaluator"):
        assert ("service", name) in commands
    assert ("fleet",) in commands
    assert services["aggregator"]["deploy"]["replicas"] == 2
    assert {"kafka", "mosquitto"} <= set(_compose()["services"])
    kafka_env = _compose()["services"]["kafka"]["environment"]
    assert "broker,controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper


@pytest.mark.parametrize("name", sorted(_project_services()))
def test_command_and_env_names_are_real(name: str) -> None:
    service = _project_services()[name]
    argv = [str(a) for a in service["command"]]
    assert argv[0] in cli.SUBCOMMANDS, f"{name}: fedmoe {argv[0]} is not a command"
    read = set(re.findall(r"env\s+(FEDMOE_[A-Z0-9_]+)", _help(argv)))
    given = {k for k in service.get("environment", {}) if k.startswith("FEDMOE_")}
    assert given, f"{name}: no FEDMOE_* settings given"
    assert given <= read, f"{name}: {sorted(given - read)} are not read by fedmoe {argv}"


def docker_mosquitto_conf() -> str:
    """The template rendered for compose: TLS only on 8883, the registry's password and ACL
    files (the `secrets` volume, written by the one-shot provisioning containers)."""
    secrets = Path("/mosquitto/secrets")
    return render_config(
        port=8883,
        run_dir=Path("/mosquitto"),
        user="mosquitto",
        bind_address="0.0.0.0",
        security=security_block(secrets / "registry"),
        tls=tls_block(TlsFiles.in_dir(secrets / "tls")),
    )


def test_mosquitto_conf_is_the_rendered_template() -> None:
    text = (DOCKER / "mosquitto.conf").read_text()
    body = "".join(text.splitlines(keepends=True)[2:])  # the two GENERATED header lines
    assert body == docker_mosquitto_conf(), "regenerate docker/mosquitto.conf (see its header)"
    assert "allow_anonymous false" in body


def test_dockerfile_installs_cpu_torch_before_the_project() -> None:
    lines = (DOCKER / "Dockerfile").read_text().splitlines()
    torch = next(i for i, line in enumerate(lines) if "download.pytorch.org/whl/cpu" in line)
    project = next(i for i, line in enumerate(lines) if "pip install ." in line)
    assert torch < project
    assert any(line.startswith('ENTRYPOINT ["fedmoe"]') for line in lines)
