"""Errors of the service layer: the runtime's control flow and the handlers' verdicts.

    fedmoe.errors.FedMoEError
    └── ServiceError                  runtime / handler control flow
        ├── InvalidPayload            a handler refuses one input (→ dead letter, committed)
        ├── RetryLater                a handler asks for the same input again later (retriable)
        └── ServiceFailed             the runtime cannot go on (fatal: the process exits non-zero)

How the runtime treats what a handler raises, in one table:

    schemas.SchemaError (decode)           → dead letter, offset committed
    InvalidPayload / non-retriable error   → dead letter, offset committed
    retriable FedMoEError (RetryLater,     → retried with capped backoff, counted
      BrokerUnavailable, BrokerTimeout)
    any other Exception (a handler bug)    → logged with traceback, dead letter, committed
"""

from __future__ import annotations

from fedmoe.errors import FedMoEError


class ServiceError(FedMoEError):
    """Root of the service layer's errors."""


class InvalidPayload(ServiceError):
    """A handler refuses one input; `reason` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryLater(ServiceError):
    """A handler cannot handle the input now (a dependency is down); try it again later."""

    retriable = True


class ServiceFailed(ServiceError):
    """The runtime cannot go on (e.g. a produced record was refused for good)."""
