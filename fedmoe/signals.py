"""`stop_on_signals`: call `stop` on the event loop when SIGTERM / SIGINT arrives.

Python-level handlers (`signal.signal`), not `loop.add_signal_handler`: asyncio's own handlers
learn the signal number from a byte written to the loop's self-pipe, and a busy loop whose
self-pipe is full (every `call_soon_threadsafe` writes to it: aiomqtt does, per socket event,
for each of a thousand simulated devices) loses that byte and with it the signal — measured:
a 1,000-device fleet ignored the demo's SIGTERM and was killed without writing its counters.
A Python-level handler runs in the main thread at the next bytecode whatever the pipe holds,
and hands `stop` to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    stop: Callable[[], None], signals: Sequence[signal.Signals] = STOP_SIGNALS
) -> Iterator[None]:
    """Call `stop` (on the running loop) for each of `signals` while the block runs; the
    previous handlers come back after it. Main thread only, as any signal handler."""
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(stop)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
