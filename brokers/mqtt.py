"""aiomqtt adapters: a client factory from `BrokerSettings`, and `MqttSession` with manual PUBACK.

Why manual PUBACK, and how
--------------------------
aiomqtt 2.5 builds a paho `Client` without `manual_ack`, so paho sends the PUBACK of a QoS 1
message inside `_handle_publish`, right after `on_message` queued it for the application
(paho/mqtt/client.py `_handle_publish`: `self._handle_on_message(message)` then
`return self._send_puback(message.mid)` unless `self._manual_ack`). A gateway that crashed
between that PUBACK and Kafka's ack would lose the message: the device thinks it delivered.

`MqttSession` switches paho to manual acknowledgement on the aiomqtt client's underlying paho
client before connecting (`client._client.manual_ack_set(True)`; paho ≥ 2.0 API), and sends
the PUBACK itself with `client._client.ack(mid, qos)` once the caller says the message is safe
(`MqttSession.ack(message)`, called by the gateway after Kafka acknowledged every record of
it). It is safe to call from the event loop thread: aiomqtt drives paho with an external loop
(`on_socket_register_write`), so `ack` → `_send_puback` → `_packet_queue` only appends the
packet to paho's out queue and registers the socket for writing; the loop's writer callback
(`loop_write`) sends it, exactly like a publish. Two guards:

- a PUBACK is sent only on the connection the message came in on: every connection gets a
  number and `ack` of a message from an earlier one is dropped (the packet id may belong to a
  different message now; the broker redelivers the old one on the new connection anyway, with
  the persistent session). paho itself clears queued out packets on reconnect;
- QoS 0 messages are never acknowledged (`ack` ignores them); QoS 2 is not subscribed to.

A message that is never acknowledged stays in flight at the broker: with a persistent session
(`clean_start=False`, `SessionExpiryInterval`) Mosquitto redelivers it (DUP set) when the same
client id reconnects, so a crash leads to redelivery, never loss. While unacknowledged messages
pile up, the broker stops sending more once the client's Receive Maximum (or Mosquitto's
`max_inflight_messages`) is reached: backpressure rather than an unbounded queue here.

Identity and TLS come from `BrokerSettings` for every client made here (username, password
from a file or the environment, `mqtts://` with the CA file): one path for every process.
A publish the broker refuses (MQTT 5 PUBACK with a reason code >= 0x80, e.g. 0x87 "not
authorized" by the ACL) completes in aiomqtt like an accepted one; `mqtt_client` hooks paho's
`on_publish` so it is logged and counted (`on_refused`) instead of passing unseen.

Errors: aiomqtt's `MqttError` family becomes `BrokerUnavailable` (connection refused or lost),
`BrokerTimeout` ("Operation timed out") or `BrokerError` (refused for good: bad credentials,
not authorised, bad client id). Every await has a timeout (`request_timeout_s`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from brokers.errors import BrokerError, BrokerTimeout, BrokerUnavailable
from brokers.settings import BrokerSettings
from brokers.tls import client_ssl_context
from fedmoe.errors import SettingsError

log = logging.getLogger(__name__)

# CONNACK codes after which retrying the same connect cannot help: MQTT 5 §3.2.2.2 (malformed,
# protocol error, unsupported version, client id not valid, bad user name or password, not
# authorised, banned, bad authentication method) and MQTT 3.1.1's 1, 2, 4, 5.
_FATAL_CONNECT_CODES = frozenset({0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C, 1, 2, 4, 5})


def _reason_value(rc: object) -> int | None:
    if isinstance(rc, ReasonCode):
        value: int = rc.value
        return value
    if isinstance(rc, int):
        return rc
    return None


def translate(exc: BaseException, what: str) -> BrokerError:
    """Our error for an aiomqtt / socket error raised while doing `what`."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, MqttConnectError) and _reason_value(exc.rc) in _FATAL_CONNECT_CODES:
        return BrokerError(f"{what}: refused: {exc}")
    if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower():
        return BrokerTimeout(f"{what}: timed out")
    return BrokerUnavailable(f"{what}: {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """One received MQTT message, with what `MqttSession.ack` needs."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    connection: int  # which connection of the session it came in on


def connect_properties(session_expiry_s: int, receive_maximum: int | None) -> Properties:
    """CONNECT properties of a persistent MQTT 5 session."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
    props.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


OnRefused = Callable[[int, int], None]  # (mid, reason code) of a publish the broker refused


def _log_refused(mid: int, code: int) -> None:
    log.warning("mqtt: publish mid %d refused by the broker (reason 0x%02x)", mid, code)


def _watch_refusals(client: aiomqtt.Client, on_refused: OnRefused) -> None:
    """Call `on_refused` for every PUBACK with a failure reason code (aiomqtt ignores it)."""
    paho = client._client  # private: aiomqtt has no hook for the PUBACK reason code
    inner: Any = paho.on_publish  # aiomqtt's, with paho's v2 callback signature

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        code = _reason_value(reason)
        if code is not None and code >= 0x80:
            on_refused(mid, code)
        if inner is not None:
            inner(c, userdata, mid, reason, properties)

    paho.on_publish = on_publish


def mqtt_client(
    settings: BrokerSettings,
    *,
    client_id: str,
    persistent: bool = True,
    session_expiry_s: int = 3600,
    receive_maximum: int | None = None,
    keepalive_s: int = 30,
    will: aiomqtt.Will | None = None,
    username: str | None = None,
    password: str | None = None,
    manual_ack: bool = False,
    tls_context: ssl.SSLContext | None = None,
    on_refused: OnRefused | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client (MQTT v5) for `settings.mqtt_url`; call inside a running loop.

    `persistent` (default) resumes the session of `client_id` (clean_start False with a
    session expiry), so QoS 1 messages sent while it was away, or not yet acknowledged, are
    delivered when it reconnects. `manual_ack` turns off paho's automatic PUBACK (see the
    module docstring); only `MqttSession` knows how to send it then.

    Credentials: `username` / `password` when given (a simulated fleet's devices), else the
    settings' account. TLS when the URL is `mqtts://`, verifying the broker against
    `settings.mqtt_ca_file` (or `tls_context`, to share one among many clients).
    `on_refused` hears of refused publishes (default: a warning in the log).
    """
    host, port = settings.mqtt_host_port()
    if username is None:
        try:
            username, password = settings.mqtt_credentials()
        except SettingsError as exc:
            raise BrokerError(f"mqtt {client_id}: {exc}") from exc
    if settings.mqtt_tls() and tls_context is None:
        tls_context = client_ssl_context(settings.mqtt_ca_file or None)
    client = aiomqtt.Client(
        host,
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=connect_properties(session_expiry_s if persistent else 0, receive_maximum),
        keepalive=keepalive_s,
        timeout=settings.request_timeout_s,
        will=will,
        username=username,
        password=password,
        tls_context=tls_context if settings.mqtt_tls() else None,
    )
    if manual_ack:
        client._client.manual_ack_set(True)  # private: see the module docstring
    _watch_refusals(client, on_refused or _log_refused)
    return client


class MqttSession:
    """A persistent MQTT 5 session with manual PUBACK; each `async with` is one connection.

    The object may be entered again after a connection dropped (a new connection of the same
    session); it is not reentrant.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        session_expiry_s: int = 3600,
        receive_maximum: int | None = None,
        keepalive_s: int = 30,
        manual_ack: bool = True,
    ) -> None:
        self._settings = settings
        self._timeout = settings.request_timeout_s
        self.client_id = client_id
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._keepalive_s = keepalive_s
        self._manual_ack = manual_ack
        self._client: aiomqtt.Client | None = None
        self._connections = itertools.count(1)
        self._connection = 0
        self.refused_publishes = 0  # PUBACKs with a failure reason code (e.g. ACL denied)

    @property
    def connected(self) -> bool:
        """True between a successful enter and the exit (or a detected drop)."""
        client = self._client
        return client is not None and not client._disconnected.done()

    async def __aenter__(self) -> Self:
        if self._client is not None:
            raise RuntimeError("MqttSession is not reentrant")
        client = mqtt_client(
            self._settings,
            client_id=self.client_id,
            session_expiry_s=self._session_expiry_s,
            receive_maximum=self._receive_maximum,
            keepalive_s=self._keepalive_s,
            manual_ack=self._manual_ack,
            on_refused=self._refused,
        )
        try:
            # aiomqtt bounds the CONNACK wait by `timeout`; the TCP connect runs in a thread.
            async with asyncio.timeout(self._timeout + 1.0):
                await client.__aenter__()
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise translate(exc, f"connect to {self._settings.mqtt_url}") from exc
        self._client = client
        self._connection = next(self._connections)
        log.info("mqtt: %s connected (connection %d)", self.client_id, self._connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        self._connection = 0
        if client is None:
            return
        try:
            async with asyncio.timeout(self._timeout + 1.0):
                await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, OSError, TimeoutError) as err:
            log.warning("mqtt: %s: disconnect was not clean: %s", self.client_id, err)

    def _refused(self, mid: int, code: int) -> None:
        self.refused_publishes += 1
        log.warning(
            "mqtt: %s: publish mid %d refused by the broker (reason 0x%02x; 0x87 = not "
            "authorized: check this account's role in the device registry)",
            self.client_id,
            mid,
            code,
        )

    def _require(self) -> aiomqtt.Client:
        if self._client is None:
            raise BrokerUnavailable(f"mqtt: {self.client_id} is not connected")
        return self._client

    async def subscribe(
        self, topic_filter: str, qos: int = 1, *, retain_as_published: bool = False
    ) -> None:
        """Subscribe (bounded wait for the SUBACK); a refused subscription is an error.

        `retain_as_published` (MQTT 5): live messages keep the retain flag their publisher set
        (by default the broker clears it on forwarding), so a subscriber can refuse them.
        """
        client = self._require()
        options = SubscribeOptions(qos=qos, retainAsPublished=retain_as_published)
        try:
            granted: Any = await client.subscribe(
                topic_filter, options=options, timeout=self._timeout
            )
        except (aiomqtt.MqttError, OSError) as exc:
            raise translate(exc, f"subscribe {topic_filter}") from exc
        codes = [_reason_value(c) for c in granted]
        if any(c is None or c >= 0x80 for c in codes):
            raise BrokerError(f"subscribe {topic_filter}: refused by the broker ({granted})")

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait (bounded) until the broker acknowledged it (QoS 1: PUBACK)."""
        client = self._require()
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=self._timeout)
        except (aiomqtt.MqttError, OSError) as exc:
            raise translate(exc, f"publish {topic}") from exc

    async def messages(self) -> AsyncIterator[MqttMessage]:
        """The messages of this connection; `BrokerUnavailable` when it drops."""
        client = self._require()
        connection = self._connection
        try:
            async for message in client.messages:
                payload = message.payload  # paho hands over bytes; the type allows more
                yield MqttMessage(
                    topic=message.topic.value,
                    payload=bytes(payload)
                    if isinstance(payload, bytes | bytearray)
                    else str(payload).encode(),
                    qos=message.qos,
                    retain=message.retain,
                    mid=message.mid,
                    connection=connection,
                )
        except aiomqtt.MqttError as exc:
            raise translate(exc, "receive") from exc

    def ack(self, message: MqttMessage) -> bool:
        """Send the PUBACK of `message` now; False when it cannot be (see the module doc)."""
        if not self._manual_ack or message.qos == 0:
            return True
        client = self._client
        if client is None or message.connection != self._connection:
            log.debug("mqtt: not acking mid %d of an earlier connection", message.mid)
            return False
        rc = client._client.ack(message.mid, message.qos)
        if rc != 0:
            log.warning("mqtt: PUBACK of mid %d not sent (rc %s)", message.mid, rc)
            return False
        return True
