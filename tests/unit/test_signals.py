"""`stop_on_signals`: a signal calls `stop` on the loop, even while the loop's self-pipe is
full; the previous handler comes back after the block."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from fedmoe.signals import stop_on_signals


async def test_sigterm_calls_stop_on_the_loop_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stopped = asyncio.Event()
    with stop_on_signals(stopped.set):
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            await stopped.wait()
    assert signal.getsignal(signal.SIGTERM) is before


async def test_a_signal_is_not_lost_when_the_loop_self_pipe_is_full() -> None:
    loop = asyncio.get_running_loop()
    csock: socket.socket = loop._csock  # type: ignore[attr-defined]
    stopped = asyncio.Event()
    with stop_on_signals(stopped.set):
        # Fill the self-pipe as a thousand MQTT clients' call_soon_threadsafe calls can; a
        # signal whose number is a byte on that pipe (loop.add_signal_handler) is lost now.
        filled = 0
        try:
            while True:
                filled += csock.send(b"\0" * 4096)
        except BlockingIOError:
            pass
        assert filled > 0
        os.kill(os.getpid(), signal.SIGINT)
        async with asyncio.timeout(5):
            await stopped.wait()
