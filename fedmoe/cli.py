"""The `fedmoe` console command: dispatches to one module per subcommand.

Each subcommand lives in `fedmoe/commands/<name>.py` with `main(argv: list[str]) -> int`,
imported only when asked for, so `fedmoe --help` stays fast and light.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "brokers": ("fedmoe.commands.brokers", "run local Kafka-API (Tansu) and Mosquitto brokers"),
    "experiment": ("fedmoe.commands.experiment", "in-process federated MoE simulation"),
    "robustness": ("fedmoe.commands.robustness", "aggregation rules against malicious devices"),
    "service": ("fedmoe.commands.service", "run one microservice (gateway, matcher, ...)"),
    "fleet": ("fedmoe.commands.fleet", "run a simulated device fleet over MQTT"),
    "demo": ("fedmoe.commands.demo", "brokers + every service + a fleet, end to end"),
    "soak": ("fedmoe.commands.soak", "the system under a fault plan, invariants live, a report"),
    "devices": ("fedmoe.commands.devices", "per-device MQTT accounts: add, revoke, list"),
    "certs": ("fedmoe.commands.certs", "a local CA and the brokers' TLS certificate"),
    "record": ("fedmoe.commands.record", "record a deployment's traffic to a Parquet file"),
    "replay": ("fedmoe.commands.replay", "replay a recording, or ask offline what-if"),
}


def _usage() -> str:
    lines = ["usage: fedmoe <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fedmoe` command."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"fedmoe: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
