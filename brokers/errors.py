"""Errors of the broker layer: adapters translate aiokafka / aiomqtt errors into these.

fedmoe.errors.FedMoEError
└── BrokerError               a transport failure (not retriable by itself)
    ├── BrokerUnavailable     the broker cannot be reached now   (retriable)
    ├── BrokerTimeout         an operation did not finish in time (retriable)
    ├── BrokerLaunchError     a local broker (Tansu, Mosquitto) did not start or stop
    │                         cleanly (not retriable: the message carries its log tail)
    └── RegistryError         the device registry refused a change or cannot be read
                              (not retriable: bad id, unknown account, unreadable file)
"""

from __future__ import annotations

from fedmoe.errors import FedMoEError


class BrokerError(FedMoEError):
    """A Kafka or MQTT transport failure."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached (connection refused, lost, no leader)."""

    retriable = True


class BrokerTimeout(BrokerError):
    """A broker operation did not complete within its timeout."""

    retriable = True


class BrokerLaunchError(BrokerError):
    """A local broker process did not start (or stop) as expected."""

    retriable = False


class RegistryError(BrokerError):
    """The device registry (accounts, Mosquitto password and ACL files) refused a change."""

    retriable = False
