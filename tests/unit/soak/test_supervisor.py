"""The supervisor: restart with capped, doubling backoff that starts over after a long run;
and a real child process restarted after a SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from fedmoe.demo.processes import ProcessGroup
from fedmoe.soak.supervisor import ProcessSpec, RestartPolicy, RestartState, Supervisor


def test_backoff_doubles_for_quick_exits_and_is_capped() -> None:
    policy = RestartPolicy(initial_s=1.0, max_s=5.0, reset_after_s=60.0)
    state = RestartState()
    # Exits 2 s after each start: a crash loop.
    assert [state.on_exit(policy, t, t + 2.0) for t in (0.0, 10.0, 20.0, 30.0, 40.0)] == [
        1.0, 2.0, 4.0, 5.0, 5.0,
    ]  # fmt: skip
    # A run of at least reset_after_s ends the loop: the next delay is the first again.
    assert state.on_exit(policy, 100.0, 160.0) == 1.0
    assert state.on_exit(policy, 170.0, 171.0) == 2.0


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        RestartPolicy(initial_s=0.0)
    with pytest.raises(ValueError, match="initial_s"):
        RestartPolicy(initial_s=5.0, max_s=1.0)


@pytest.mark.timeout(60)
def test_a_killed_child_is_restarted(tmp_path: Path) -> None:
    async def scenario() -> None:
        restarted = asyncio.Event()
        seen: list[tuple[str, int]] = []

        def on_restart(spec: ProcessSpec, pid: int) -> None:
            seen.append((spec.name, pid))
            restarted.set()

        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        policy = RestartPolicy(initial_s=0.05, max_s=0.1, reset_after_s=30.0)
        async with ProcessGroup(tmp_path / "logs", stop_timeout_s=5.0) as group:
            async with Supervisor(group, policy, on_restart=on_restart) as sup:
                await sup.start(ProcessSpec("sleeper-1", "sleeper", argv, dict(os.environ)))
                first = sup.pid("sleeper-1")
                assert first is not None
                os.kill(first, signal.SIGKILL)
                async with asyncio.timeout(20):
                    await restarted.wait()
                second = sup.pid("sleeper-1")
                assert second is not None
                assert second != first
                assert seen == [("sleeper-1", second)]
                assert sup.restarts == {"sleeper": 1}
                assert sup.states["sleeper-1"].exits[0][1] == -signal.SIGKILL
                sup.stop()
            # Stopped supervision: the group's shutdown is not restarted.
            assert sup.restarts == {"sleeper": 1}

    asyncio.run(scenario())
