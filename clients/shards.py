"""`fedmoe fleet --fleet-processes N`: one fleet's devices sharded over N OS processes.

One asyncio process runs a few hundred simulated devices at most before its event loop (MQTT
sockets, training, timers) falls behind their deadlines; shards spread them over cores. The
parent starts `fedmoe fleet` once per contiguous device range (`control.shard_ranges`) with
the same settings, forwards SIGTERM / SIGINT to them, waits for all, and merges their counter
files into the one `--stats-file` (per shard: `FILE.K`; a journal likewise `FILE.K`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers._process import pdeathsig_preexec
from clients.control import shard_ranges
from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from fedmoe.signals import stop_on_signals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSettings:
    """How many processes a fleet runs in."""

    fleet_processes: int = setting(
        "FEDMOE_FLEET_PROCESSES",
        1,
        "OS processes the fleet's devices are sharded over (the parent starts, stops and "
        "merges them)",
    )

    def __post_init__(self) -> None:
        if self.fleet_processes < 1:
            raise SettingsError("FEDMOE_FLEET_PROCESSES must be >= 1")


def merge_totals(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum counter dicts (nested too); lag summaries keep n summed, max, a weighted mean."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping):
                if {"n", "mean", "max"} <= set(value):
                    prev = out.get(key, {"n": 0, "mean": 0.0, "max": 0.0})
                    n = prev["n"] + value["n"]
                    mean = (prev["mean"] * prev["n"] + value["mean"] * value["n"]) / n if n else 0.0
                    out[key] = {
                        "n": n,
                        "mean": round(mean, 4),
                        "max": max(prev["max"], value["max"]),
                    }
                else:
                    out[key] = merge_totals([out.get(key, {}), value])
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    return out


async def run_sharded(
    env: Mapping[str, str],
    devices: range,
    processes: int,
    *,
    stats_file: str,
    journal_file: str,
) -> int:
    """Run `devices` as `processes` child fleets; the worst exit code."""
    ranges = shard_ranges(devices.start, len(devices), processes)
    children: list[asyncio.subprocess.Process] = []
    for k, shard in enumerate(ranges, start=1):
        child_env = {
            **env,
            "FEDMOE_FLEET_PROCESSES": "1",
            "FEDMOE_FLEET_FIRST": str(shard.start),
            "FEDMOE_FLEET_COUNT": str(len(shard)),
            "FEDMOE_FLEET_STATS_FILE": f"{stats_file}.{k}" if stats_file else "",
            "FEDMOE_FLEET_JOURNAL_FILE": f"{journal_file}.{k}" if journal_file else "",
        }
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fedmoe",
                "fleet",
                env=child_env,
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=pdeathsig_preexec(),
            )
        )
    log.info("fleet: %d devices over %d processes %s", len(devices), len(ranges), ranges)

    def stop() -> None:
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)

    with stop_on_signals(stop):
        codes = await asyncio.gather(*(c.wait() for c in children))
    if stats_file:
        merge_stats(stats_file, devices, len(ranges))
    return max((abs(c) for c in codes), default=0)


def merge_stats(stats_file: str, devices: range, shards: int) -> dict[str, Any]:
    """Merge the shards' counter files `FILE.1..K` into `FILE`; the merged counters."""
    read = []
    for k in range(1, shards + 1):
        with contextlib.suppress(OSError, ValueError):
            read.append(json.loads(Path(f"{stats_file}.{k}").read_text()))
    merged = {
        "first": devices.start,
        "count": len(devices),
        "processes": shards,
        "shards_read": len(read),
        "last_round": max((s.get("last_round", -1) for s in read), default=-1),
        "totals": merge_totals([s.get("totals", {}) for s in read]),
    }
    Path(stats_file).write_text(json.dumps(merged, indent=1, sort_keys=True))
    return merged
