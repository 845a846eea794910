"""A fedmoe-style service for tests: `ServiceRuntime` with a trivial mapping handler.

Each input `DeviceStatus` with id X becomes a `DeviceStatus` with id `out-X` on the output
topic (same key). Broker and runtime settings come from the usual `FEDMOE_*` variables; the
handler's own knobs are flags. Run: `python -m tests.integration.programs.echo_service`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from brokers.settings import BrokerSettings
from fedmoe.settings import load_settings
from schemas import DeviceStatus
from services.errors import InvalidPayload
from services.handler import InboundRecord, Outbound
from services.runtime import RuntimeSettings, ServiceRuntime, run_until_stopped


class EchoHandler:
    """status X → status out-X; a record whose reason is 'reject' is refused."""

    def __init__(self, output: str, delay_s: float) -> None:
        self._output = output
        self._delay_s = delay_s

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        msg = record.message
        if not isinstance(msg, DeviceStatus):
            raise InvalidPayload("wrong-type", type(msg).__name__)
        if msg.reason == "reject":
            raise InvalidPayload("rejected-by-handler", msg.message_id)
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        out = DeviceStatus(
            message_id=f"out-{msg.message_id}",
            device_id=msg.device_id,
            round=msg.round,
            timestamp=msg.timestamp,
            online=msg.online,
        )
        return [Outbound(self._output, record.key, out)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="echo_service")
    parser.add_argument("--input", required=True, help="concrete input topic")
    parser.add_argument("--output", required=True, help="concrete output topic")
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="sleep per record")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    broker = load_settings(BrokerSettings, os.environ)
    settings = load_settings(RuntimeSettings, os.environ)
    runtime = ServiceRuntime(
        broker,
        name="echo",
        handler=EchoHandler(args.output, args.delay_ms / 1000),
        inputs=[args.input],
        group_id=args.group,
        settings=settings,
    )
    asyncio.run(run_until_stopped(runtime))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
