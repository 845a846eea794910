"""`fedmoe demo`: placeholder until the end-to-end demo exists (brokers + services + fleet).

For now it runs the brokers' smoke run, so `make demo` exercises the local brokers.
"""

from __future__ import annotations

from fedmoe.commands import brokers


def main(argv: list[str]) -> int:
    """Entry point of `fedmoe demo`."""
    print(
        "fedmoe demo: the end-to-end demo is not built yet; running the brokers' smoke run",
        flush=True,
    )
    return brokers.main(["smoke", *argv])
