"""The demo's MQTT accounts: every process that speaks MQTT gets its own, in the run's registry.

- `gateway-1` (role gateway): its password in `DIR/secrets/gateway-1.secret`, handed to the
  gateway process as FEDMOE_MQTT_USERNAME + FEDMOE_MQTT_PASSWORD_FILE;
- `recorder` (role observer), when the run is recorded, the same way;
- each simulated device (role device, username = its id): the secrets in one JSON map,
  `DIR/secrets/fleet.json` (0600), handed to the fleet as FEDMOE_FLEET_SECRETS_FILE.

Secrets travel in files (0600) named by environment variables, never in argv, never in a log;
the registry itself keeps only their hashes. Processes that speak only Kafka get no account.
Accounts already registered (a registry given by FEDMOE_DEVICE_REGISTRY) get new secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from brokers.registry import DeviceRegistry, write_secrets_file
from fedmoe.commands.devices import write_secrets_text
from moe.scenario import device_id

GATEWAY = "gateway-1"  # GatewaySettings.client_id's default: one gateway in the demo
RECORDER = "recorder"
MONITOR = "monitor"


def _account_env(name: str, secret: str, secrets_dir: Path) -> dict[str, str]:
    path = secrets_dir / f"{name}.secret"
    write_secrets_text(path, secret)
    return {"FEDMOE_MQTT_USERNAME": name, "FEDMOE_MQTT_PASSWORD_FILE": str(path)}


def provision_demo(
    registry: DeviceRegistry,
    secrets_dir: Path,
    *,
    devices: int,
    record: bool,
    monitor: bool = False,
) -> dict[str, Mapping[str, str]]:
    """Register the run's accounts; process name ("gateway", "recorder", "monitor", "fleet")
    → the environment that gives it its credentials (`monitor`: an observer account for an
    in-process watcher of `$SYS`, e.g. the soak's)."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    envs: dict[str, Mapping[str, str]] = {}
    gateway = registry.add([GATEWAY], role="gateway", rotate=True)
    envs["gateway"] = _account_env(GATEWAY, gateway[GATEWAY], secrets_dir)
    if record:
        recorder = registry.add([RECORDER], role="observer", rotate=True)
        envs["recorder"] = _account_env(RECORDER, recorder[RECORDER], secrets_dir)
    if monitor:
        watcher = registry.add([MONITOR], role="observer", rotate=True)
        envs["monitor"] = _account_env(MONITOR, watcher[MONITOR], secrets_dir)
    fleet = registry.add([device_id(i) for i in range(devices)], rotate=True)
    fleet_file = secrets_dir / "fleet.json"
    write_secrets_file(fleet_file, fleet)
    envs["fleet"] = {"FEDMOE_FLEET_SECRETS_FILE": str(fleet_file)}
    return envs
