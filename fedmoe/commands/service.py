"""`fedmoe service <name> [flags]`: run one microservice process.

Each service lives in `services/<name>/app.py` with `main(argv) -> int`; it is imported only
when asked for. Add a service by adding a line to `SERVICES`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SERVICES: dict[str, tuple[str, str]] = {
    "aggregator": ("services.aggregator.app", "per-part aggregation of updates → part versions"),
    "gateway": ("services.gateway.app", "MQTT ↔ Kafka bridge: devices in, assignments/model out"),
    "matcher": ("services.matcher.app", "the round clock: opens rounds, matches, closes rounds"),
    "evaluator": ("services.evaluator.app", "scores the global model of every closed round"),
    "profiler": ("services.profiler.app", "device telemetry and round outcomes → profiles"),
    "load-monitor": ("services.load_monitor.app", "per-expert load and imbalance → expert-load"),
}


def _usage() -> str:
    lines = ["usage: fedmoe service <name> [flags]   (fedmoe service <name> --help)", ""]
    lines.append("services:")
    lines += [f"  {name:<13} {text}" for name, (_, text) in SERVICES.items()]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Dispatch to `services.<name>.app:main(rest)`."""
    args = list(argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SERVICES:
        print(f"fedmoe service: unknown service {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SERVICES[name][0])
    code: int = module.main(rest)
    return code
