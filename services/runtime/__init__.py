"""The one consume→handle→produce runtime every service runs in.

- `ServiceRuntime` (`service.py`): the async context manager (producer, consumer, TaskGroup);
- `ConsumeLoop` (`loop.py`): the loop itself, also the group's rebalance listener;
- `Delivery` (`delivery.py`): enqueue outputs, await every ack, re-send on retriable errors;
- `RuntimeSettings` (`settings.py`): the knobs (`FEDMOE_RUNTIME_*`).

Handlers implement `services.handler.Handler` (and optionally `Ticker`, `Checkpointer`).
"""

from services.handler import Checkpointer, Handler, InboundRecord, Outbound, Ticker
from services.runtime.delivery import Backoff, Delivery, EncodedRecord, encode_outbound
from services.runtime.loop import ConsumeLoop
from services.runtime.service import (
    ConsumerFactory,
    ServiceRuntime,
    run_until_stopped,
    stop_on_signals,
)
from services.runtime.settings import RuntimeSettings

__all__ = [
    "Backoff",
    "Checkpointer",
    "ConsumeLoop",
    "ConsumerFactory",
    "Delivery",
    "EncodedRecord",
    "Handler",
    "InboundRecord",
    "Outbound",
    "RuntimeSettings",
    "ServiceRuntime",
    "Ticker",
    "encode_outbound",
    "run_until_stopped",
    "stop_on_signals",
]
