"""The project's one root exception.

Every error the project raises on purpose derives from `FedMoEError`. Each package keeps its
own `errors.py`; adapters translate library errors (aiokafka, aiomqtt, msgpack) into ours with
`raise ... from exc`. `retriable` says whether trying the same operation again can help.

    FedMoEError
    ├── SettingsError                     bad configuration value (not retriable)
    ├── schemas.SchemaError               bytes or fields that break the wire contract
    │   └── (OversizeError, MalformedError, UnsupportedVersionError, ...)
    ├── moe.MoEError                      domain-logic errors
    │   ├── moe.InvalidArgumentError      a bad domain argument (also a ValueError)
    │   ├── moe.InfeasibleAssignmentError
    │   └── moe.UpdateRejected            an update that aggregation refuses (with a reason)
    ├── brokers.BrokerError               transport failures
    │   ├── brokers.BrokerUnavailable     (retriable)
    │   ├── brokers.BrokerTimeout         (retriable)
    │   └── brokers.BrokerLaunchError     a local broker did not start
    └── services.ServiceError             runtime / handler control flow
"""

from __future__ import annotations


class FedMoEError(Exception):
    """Root of every error raised on purpose by fedmoe-bus."""

    retriable: bool = False


class SettingsError(FedMoEError):
    """A configuration value is missing or invalid."""
