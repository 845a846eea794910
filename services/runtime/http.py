"""`MetricsServer`: a process's HTTP endpoint — `/metrics` (Prometheus text format), `/healthz`
(the process is alive and its loop answers) and `/readyz` (connected and caught up: 200, else
503 with the reason).

A few lines of asyncio rather than prometheus_client's threaded server: it runs in the
service's own event loop (so a wedged loop shows as a failing /healthz), needs no thread, and
serves each process's own registry. HTTP/1.0-style: one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Self

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.errors import ServiceFailed

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]

_READ_TIMEOUT_S = 5.0
_MAX_REQUEST = 8192


def metrics_port(rng: random.Random | None = None) -> int:
    """A free port for a process's metrics endpoint, chosen *below* the OS's ephemeral range.

    A port from `free_port()` (bind to 0) lies in the ephemeral range, where any outgoing
    connection may take it before the process binds it: measured, a 5,000-device fleet's MQTT
    connections took an aggregator's port and it could never come back. Ports below the range
    are never handed out for outgoing connections."""
    low = _ephemeral_low()
    rng = rng or random.Random()
    candidates = list(range(max(1024, low - 12000), low))
    rng.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ServiceFailed(f"no free port below {low} for a metrics endpoint")


def _ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


class MetricsServer:
    """Serves `registry` and the health probes on host:port (port 0 = a free one)."""

    def __init__(
        self, registry: CollectorRegistry, ready: Readiness, *, host: str, port: int
    ) -> None:
        self._registry = registry
        self._ready = ready
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ServiceFailed(f"metrics endpoint on {self.host}:{self.port}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ready, why = self._ready()
            return (200 if ready else 503), "text/plain", f"{why}\n".encode()
        return 404, "text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head[:_MAX_REQUEST].split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) < 2 or parts[0] not in {"GET", "HEAD"}:
                status, kind, body = 405, "text/plain", b"GET only\n"
            else:
                status, kind, body = self.respond(parts[1])
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if parts and parts[0] != "HEAD":
                writer.write(body)
            async with asyncio.timeout(_READ_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
