"""One device's MQTT link: a persistent MQTT 5 session with a last will, reconnecting.

- Session: client id stable per device, `clean_start` off with a session expiry, so QoS 1
  messages for the device (assignments, acks, model versions) that arrive while it is away are
  queued by the broker and delivered when it comes back.
- Last will: retained QoS 1 on the device's status topic, built fresh for every connection (it
  names the round the device last announced itself for). The broker publishes it when the
  connection ends without a DISCONNECT: a crash, a network loss, or `drop` here.
- `drop(away_s)`: the simulated fault. It shuts the socket down under paho (no DISCONNECT
  packet), so the broker sees a lost connection and publishes the will; the link stays away for
  `away_s`, then reconnects to the same session.
- `publish` waits, bounded, for a connection and retries on one that dropped meanwhile; QoS 1
  publishes are complete when the broker's PUBACK arrived.
- Retained messages (the model parts, the latest round) come on the first connection of the
  process; a reconnect keeps the session's subscriptions and does not fetch them again.
- `subscribe` / `unsubscribe` change the subscriptions while the link runs (a device listens
  to an assigned expert's part only for its round): at once when connected, else on the next
  connection (an unsubscribe the session still holds is sent then too).
- Incoming messages are handed to `handle` in arrival order, one at a time; aiomqtt has already
  PUBACKed them (the device's state lives in this process, so a dropped connection loses none).

Every wait on the broker is bounded by `BrokerSettings.request_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from brokers.errors import BrokerError, BrokerTimeout
from brokers.mqtt import mqtt_client, translate
from brokers.settings import BrokerSettings

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]
OnConnect = Callable[[], Awaitable[None]]
Will = Callable[[], tuple[str, bytes]]

RETAIN_SEND_ON_SUBSCRIBE = SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
RETAIN_SEND_IF_NEW_SUB = SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
_RETRY_INITIAL_S = 0.2
_RETRY_MAX_S = 5.0


class DeviceLink:
    """The MQTT side of one device (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        client_id: str,
        subscriptions: Sequence[str],
        will: Will,
        session_expiry_s: int,
        keepalive_s: int,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._broker = broker
        # The device's own account (a simulated fleet gives each device its own); None: the
        # broker settings' account.
        self._username = username
        self._password = password
        self._timeout = broker.request_timeout_s
        self.client_id = client_id
        self._subscriptions = list(subscriptions)
        self._unsubscribe_later: set[str] = set()  # dropped while away: still in the session
        self._will = will
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._away_until = 0.0
        self._was_connected = False  # the last connection attempt got as far as subscribing
        self.connections = 0

    @property
    def connected(self) -> bool:
        """Connected and subscribed now."""
        return self._connected.is_set()

    async def run(self, handle: Handler, on_connect: OnConnect) -> None:
        """Connect, subscribe, call `on_connect`, hand every message to `handle`; reconnect
        after a drop. Runs until cancelled (then disconnects cleanly) or a non-retriable
        `BrokerError` (refused for good)."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            away = self._away_until - loop.time()
            if away > 0:
                await asyncio.sleep(away)
            try:
                await self._connection(handle, on_connect)
            except BrokerError as exc:
                if not exc.retriable:
                    raise
                failures = 0 if self._was_connected else failures + 1
                delay = min(_RETRY_INITIAL_S * 2**failures, _RETRY_MAX_S)
                log.debug("%s: connection ended (%s); again in %.1fs", self.client_id, exc, delay)
                await asyncio.sleep(delay)

    async def _connection(self, handle: Handler, on_connect: OnConnect) -> None:
        self._was_connected = False
        topic, payload = self._will()
        client = mqtt_client(
            self._broker,
            client_id=self.client_id,
            persistent=True,
            session_expiry_s=self._session_expiry_s,
            keepalive_s=self._keepalive_s,
            will=aiomqtt.Will(topic, payload, qos=1, retain=True),
            username=self._username,
            password=self._password,
        )
        try:
            async with asyncio.timeout(self._timeout + 1.0):
                await client.__aenter__()
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise translate(exc, f"{self.client_id}: connect") from exc
        try:
            for topic_filter in list(self._subscriptions):
                await self._subscribe(client, topic_filter)
            for topic_filter in list(self._unsubscribe_later):
                await self._unsubscribe(client, topic_filter)
            self._client = client
            self._connected.set()
            self._was_connected = True
            self.connections += 1
            await on_connect()
            async for message in client.messages:
                data = message.payload
                await handle(
                    message.topic.value,
                    bytes(data) if isinstance(data, bytes | bytearray) else str(data).encode(),
                )
        except aiomqtt.MqttError as exc:
            raise translate(exc, f"{self.client_id}: receive") from exc
        finally:
            self._client = None
            self._connected.clear()
            try:
                # A clean DISCONNECT unless the connection is already gone (then a no-op).
                async with asyncio.timeout(self._timeout + 1.0):
                    await client.__aexit__(None, None, None)
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                log.debug("%s: disconnect was not clean: %s", self.client_id, exc)

    async def _subscribe(self, client: aiomqtt.Client, topic_filter: str) -> None:
        # Retained messages (the model, the latest round) on the first connection of this
        # process; on a reconnect the subscriptions survive in the session and this process
        # still holds what they said, so only a subscription the broker lost resends them.
        retain = RETAIN_SEND_ON_SUBSCRIBE if self.connections == 0 else RETAIN_SEND_IF_NEW_SUB
        options = SubscribeOptions(qos=1, retainHandling=retain)
        try:
            granted = await client.subscribe(
                topic_filter, 0, options=options, timeout=self._timeout
            )
        except (aiomqtt.MqttError, OSError) as exc:
            raise translate(exc, f"{self.client_id}: subscribe {topic_filter}") from exc
        codes = [getattr(code, "value", code) for code in granted]
        if any(not isinstance(c, int) or c >= 0x80 for c in codes):
            raise BrokerError(f"{self.client_id}: subscribe {topic_filter} refused ({granted})")

    async def _unsubscribe(self, client: aiomqtt.Client, topic_filter: str) -> None:
        try:
            await client.unsubscribe(topic_filter, timeout=self._timeout)
        except (aiomqtt.MqttError, OSError) as exc:
            raise translate(exc, f"{self.client_id}: unsubscribe {topic_filter}") from exc
        self._unsubscribe_later.discard(topic_filter)

    async def subscribe(self, topic_filter: str) -> None:
        """Add a subscription (its retained message comes with it). Sent now when connected,
        else on the next connection; a failure here is left to that reconnect."""
        self._unsubscribe_later.discard(topic_filter)
        if topic_filter in self._subscriptions:
            return
        self._subscriptions.append(topic_filter)
        client = self._client
        if client is not None:
            try:
                await self._subscribe(client, topic_filter)
            except BrokerError as exc:
                log.debug("%s: %s (again on reconnect)", self.client_id, exc)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Drop a subscription: now when connected, else on the next connection."""
        if topic_filter not in self._subscriptions:
            return
        self._subscriptions.remove(topic_filter)
        self._unsubscribe_later.add(topic_filter)
        client = self._client
        if client is not None:
            try:
                await self._unsubscribe(client, topic_filter)
            except BrokerError as exc:
                log.debug("%s: %s (again on reconnect)", self.client_id, exc)

    async def publish(self, topic: str, payload: bytes, *, retain: bool, within_s: float) -> None:
        """Publish QoS 1 and wait for the broker's PUBACK, waiting up to `within_s` for a
        connection (across reconnects). `BrokerTimeout` when none was had in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while (remaining := deadline - loop.time()) > 0:
            client = self._client
            if client is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._connected.wait()
                continue
            try:
                timeout = min(remaining, self._timeout)
                await client.publish(topic, payload, qos=1, retain=retain, timeout=timeout)
                return
            except (aiomqtt.MqttError, OSError) as exc:
                error = translate(exc, f"{self.client_id}: publish {topic}")
                if not error.retriable:
                    raise error from exc
                # The read loop notices a dead connection soon; do not spin meanwhile.
                await asyncio.sleep(min(0.1, max(deadline - loop.time(), 0.0)))
        raise BrokerTimeout(f"{self.client_id}: publish {topic}: no connection in {within_s}s")

    def drop(self, away_s: float) -> bool:
        """Lose the connection abruptly (no DISCONNECT: the broker publishes the will) and stay
        away `away_s` seconds. False when not connected."""
        client = self._client
        if client is None:
            return False
        self._away_until = asyncio.get_running_loop().time() + away_s
        sock = client._client.socket()  # paho's socket: aiomqtt has no abrupt close
        if not isinstance(sock, socket.socket):
            return False
        with contextlib.suppress(OSError):
            # FIN without DISCONNECT; the broker closes its end and paho reads the EOF.
            sock.shutdown(socket.SHUT_WR)
        log.info("%s: connection dropped (away %.1fs)", self.client_id, away_s)
        return True
