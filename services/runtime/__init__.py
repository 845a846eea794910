"""The one consume→handle→produce runtime every service runs in.

- `ServiceRuntime` (`service.py`): the async context manager (producer, consumer, TaskGroup);
- `ConsumeLoop` (`loop.py`): the loop itself, also the group's rebalance listener;
- `Delivery` (`delivery.py`): enqueue outputs, await every ack, re-send on retriable errors;
- `RuntimeSettings` (`settings.py`): the knobs (`FEDMOE_RUNTIME_*`).

Handlers implement `services.handler.Handler` (and optionally `Ticker`, `Checkpointer`).

Why our own small runtime over aiokafka rather than faststream: the guarantees we need cut
across what a framework's per-message ack policy offers: commit a batch only after every output
is acknowledged *and* the handler's checkpoint returned; coordinate the rebalance listener with
the batch in hand; dead-letter with our `DeadLetter` envelope; send the gateway's MQTT PUBACK
only after Kafka's ack (an ack that spans two brokers, outside any one broker's ack policy);
and Tansu's quirks (no idempotent producer). Around faststream that would be as much code
plus a dependency tree (pydantic, fast-depends) the project does not carry; here it is under
1,000 lines, each decision unit-tested against in-memory fakes.
"""

from fedmoe.signals import stop_on_signals
from services.handler import Checkpointer, Handler, InboundRecord, Outbound, Ticker
from services.runtime.delivery import Backoff, Delivery, EncodedRecord, encode_outbound
from services.runtime.loop import ConsumeLoop
from services.runtime.service import (
    ConsumerFactory,
    ServiceRuntime,
    run_until_stopped,
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
