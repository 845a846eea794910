"""What per-device authentication costs: provisioning N accounts, and Mosquitto's CPU per CONNECT
with the registry's `$7$` (PBKDF2-SHA512, 101 iterations) check against anonymous access.

    .venv/bin/python -m benchmarks.mqtt_auth [--devices 2000] [--connects 500]

Prints one JSON line per measurement: `provision` (registry.add of N devices, seconds) and, for
`anonymous` and `auth`, the wall time of C sequential MQTT 5 connect+disconnect cycles and the
broker's CPU seconds over them (from /proc/<pid>/stat).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiomqtt

from benchmarks.cpu import process_cpu_s
from brokers.mosquitto import MosquittoBroker
from brokers.registry import DeviceRegistry


async def _connects(
    broker: MosquittoBroker, n: int, secrets: dict[str, str] | None
) -> dict[str, float]:
    assert broker.pid is not None
    names = sorted(secrets) if secrets else [f"anon-{i}" for i in range(n)]
    cpu0, t0 = process_cpu_s(broker.pid), time.perf_counter()
    for i in range(n):
        name = names[i % len(names)]
        client = aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            identifier=f"bench-{i}",
            username=name if secrets else None,
            password=secrets[name] if secrets else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=10,
        )
        async with client:
            pass
    wall = time.perf_counter() - t0
    cpu = process_cpu_s(broker.pid) - cpu0
    return {
        "connects": n,
        "wall_s": round(wall, 3),
        "connects_per_s": round(n / wall, 1),
        "broker_cpu_s": round(cpu, 3),
        "broker_cpu_ms_per_connect": round(1000 * cpu / n, 3),
    }


async def main(devices: int, connects: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fedmoe-bench-auth-") as tmp:
        root = Path(tmp)
        registry = DeviceRegistry.create(root / "registry", "fleet")
        t0 = time.perf_counter()
        secrets = registry.add([f"dev-{i:05d}" for i in range(devices)])
        provision_s = time.perf_counter() - t0
        print(
            json.dumps({"bench": "provision", "devices": devices, "seconds": round(provision_s, 3)})
        )
        async with MosquittoBroker(root / "anon") as broker:
            result = await _connects(broker, connects, None)
            print(json.dumps({"bench": "anonymous", **result}), flush=True)
        async with MosquittoBroker(root / "auth", registry=registry) as broker:
            result = await _connects(broker, connects, secrets)
            print(json.dumps({"bench": "auth", "accounts": devices, **result}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--connects", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.connects))
