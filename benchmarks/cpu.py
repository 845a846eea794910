"""CPU seconds spent by each role of a process tree, from Linux's /proc.

A benchmark that runs brokers, services and a simulated fleet on one host measures their
wall times together; what each of them cost in CPU tells the bus's share apart from the
simulator's (`benchmarks/round.py`). Roles come from command lines: `mosquitto`, `kafka`
(Tansu), one per `fedmoe service NAME`, `fleet` (a `fedmoe fleet` and every process under it),
else `other`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcessCpu:
    """One process: its parent, its command line and its CPU seconds so far (user + system)."""

    ppid: int
    cmdline: tuple[str, ...]
    cpu_s: float


def parse_stat(text: str, ticks_per_s: float) -> tuple[int, float]:
    """(ppid, user + system CPU seconds) from a /proc/PID/stat line.

    The command name (field 2) is in parentheses and may hold spaces and parentheses itself,
    so the fields are counted from its last ')'.
    """
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state, ppid, ... utime is field 14 of the line, stime 15 (1-based).
    ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
    return ppid, (utime + stime) / ticks_per_s


def usable_cpus() -> int:
    """The cores this process may run on (its affinity): the core count a figure is quoted with."""
    return len(os.sched_getaffinity(0))


def host() -> dict[str, object]:
    """The machine a benchmark ran on, for its JSON lines: architecture and usable cores."""
    return {"machine": platform.machine(), "cpus": usable_cpus()}


def process_cpu_s(pid: int, proc: Path = _PROC) -> float:
    """User + system CPU seconds of process `pid` so far."""
    return parse_stat((proc / str(pid) / "stat").read_text(), float(os.sysconf("SC_CLK_TCK")))[1]


def role_of(cmdline: tuple[str, ...]) -> str | None:
    """The role a command line names, or None (decided by its ancestors)."""
    words = [os.path.basename(w) for w in cmdline]
    if "mosquitto" in words:
        return "mosquitto"
    if "tansu" in words:
        return "kafka"
    if "fedmoe" in words:
        after = words[words.index("fedmoe") + 1 :]
        if after[:1] == ["service"] and len(after) > 1:
            return after[1]
        if after[:1] == ["fleet"]:
            return "fleet"
    return None


def snapshot(proc: Path = _PROC) -> dict[int, ProcessCpu]:
    """Every readable process now (those that exit while being read are skipped)."""
    ticks = float(os.sysconf("SC_CLK_TCK"))
    out: dict[int, ProcessCpu] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid, cpu_s = parse_stat((entry / "stat").read_text(), ticks)
            raw = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        cmdline = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        out[int(entry.name)] = ProcessCpu(ppid, cmdline, cpu_s)
    return out


def roles_under(root: int, processes: Mapping[int, ProcessCpu]) -> dict[int, str]:
    """The role of every process descending from `root` (a process without a role of its own
    takes its nearest ancestor's; `other` when none has one)."""
    children: dict[int, list[int]] = {}
    for pid, p in processes.items():
        children.setdefault(p.ppid, []).append(pid)
    roles: dict[int, str] = {}
    stack = [(pid, "other") for pid in children.get(root, [])]
    while stack:
        pid, inherited = stack.pop()
        role = role_of(processes[pid].cmdline) or inherited
        roles[pid] = role
        stack.extend((child, role) for child in children.get(pid, []))
    return roles


def cpu_by_role(
    before: Mapping[int, ProcessCpu], after: Mapping[int, ProcessCpu], root: int
) -> dict[str, float]:
    """CPU seconds each role under `root` spent between two snapshots (a process started in
    between counts from 0; one that exited in between is not counted)."""
    spent: dict[str, float] = {}
    for pid, role in roles_under(root, after).items():
        earlier = before.get(pid)
        start = earlier.cpu_s if earlier is not None and earlier.ppid == after[pid].ppid else 0.0
        spent[role] = spent.get(role, 0.0) + after[pid].cpu_s - start
    return spent
