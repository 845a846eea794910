"""`MosquittoBroker`: a local Mosquitto with the project's own config, as an async context
manager that can also be stopped and started again on the same port and run directory
(persistent sessions and their queued QoS1 messages survive the restart).

    async with MosquittoBroker(run_dir, registry=DeviceRegistry(path)) as mqtt:
        mqtt.url  # "mqtt://127.0.0.1:PORT" ("mqtts://..." with `tls`)
        await mqtt.reload()  # SIGHUP: re-read the registry's password and ACL files

The config comes from the template `brokers/mosquitto.conf` (see there for each choice). With a
registry every client authenticates and the registry's ACL applies; without one
(`registry=None`, the `--insecure` debugging mode) anonymous clients may do anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import ssl
import string
import time
import uuid
from pathlib import Path

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from brokers._launcher import LaunchedBroker
from brokers.errors import BrokerLaunchError
from brokers.registry import DeviceRegistry
from brokers.settings import LocalBrokerSettings
from brokers.tls import TlsFiles, client_ssl_context

log = logging.getLogger(__name__)

_RETRY_S = 0.05
_DEFAULTS = LocalBrokerSettings()
_UNSAFE_IN_CONF = set(" \t\r\n#")
_TEMPLATE = Path(__file__).with_name("mosquitto.conf")


def find_mosquitto(explicit: str = "") -> Path:
    """The mosquitto binary: `explicit`, else on PATH, else /usr/sbin/mosquitto."""
    candidates = (
        [explicit] if explicit else [shutil.which("mosquitto") or "", "/usr/sbin/mosquitto"]
    )
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    where = (
        f"FEDMOE_MOSQUITTO_BIN={explicit!r} is not an executable file"
        if explicit
        else ("mosquitto not found on PATH nor at /usr/sbin/mosquitto")
    )
    raise BrokerLaunchError(
        f"{where}: run `make test` (or `make setup`), which installs the Debian package "
        "`mosquitto`, or set FEDMOE_MOSQUITTO_BIN"
    )


def config_template() -> str:
    """The text of the packaged `brokers/mosquitto.conf` template (package data beside this
    module; read by path so it also works where `brokers` was installed as a namespace)."""
    return _TEMPLATE.read_text()


def _conf_path(path: Path, what: str) -> str:
    text = str(path)
    if _UNSAFE_IN_CONF & set(text):
        raise BrokerLaunchError(f"{what} {text!r}: Mosquitto's config cannot hold spaces or '#'")
    return text


def security_block(
    registry: Path | None, *, passwd: Path | None = None, acl: Path | None = None
) -> str:
    """The config lines of authentication and authorization: the registry's password and ACL
    files (`passwd` / `acl` override where the broker sees them), or anonymous access."""
    if registry is None:
        return (
            "# INSECURE (--insecure): anonymous clients may publish and subscribe to anything.\n"
            "allow_anonymous true"
        )
    passwd = passwd or registry / "mosquitto.passwd"
    acl = acl or registry / "mosquitto.acl"
    return "\n".join(
        [
            "allow_anonymous false",
            f"password_file {_conf_path(passwd, 'password file')}",
            f"acl_file {_conf_path(acl, 'ACL file')}",
        ]
    )


def tls_block(tls: TlsFiles | None) -> str:
    """The listener's TLS lines (a comment when TLS is off)."""
    if tls is None:
        return "# (TLS off: plain mqtt://)"
    return "\n".join(
        [
            f"cafile {_conf_path(tls.ca_file, 'CA file')}",
            f"certfile {_conf_path(tls.cert_file, 'certificate')}",
            f"keyfile {_conf_path(tls.key_file, 'key file')}",
            "require_certificate false",
        ]
    )


def render_config(
    *,
    port: int,
    run_dir: Path,
    max_packet_size: int = _DEFAULTS.mqtt_max_packet_size,
    max_queued_messages: int = _DEFAULTS.mqtt_max_queued_messages,
    max_inflight_messages: int = _DEFAULTS.mqtt_max_inflight_messages,
    user: str | None = None,
    template: str | None = None,
    bind_address: str = "127.0.0.1",
    security: str | None = None,
    tls: str | None = None,
    pid_file: Path | None = None,
) -> str:
    """The Mosquitto config for a broker on `bind_address`:`port` keeping its files in
    `run_dir` (loopback unless a deployment, e.g. docker/, binds every interface).

    `security` and `tls` are the blocks of `security_block` and `tls_block` (default: the
    insecure block and no TLS); `pid_file` adds Mosquitto's pid file (how `fedmoe devices`
    finds a local broker to reload)."""
    if not 0 < port < 65536:
        raise BrokerLaunchError(f"Mosquitto port {port} is not a port")
    if max_queued_messages < 1:
        raise BrokerLaunchError("max_queued_messages must be >= 1 (0 is broken before 2.0.22)")
    if max_packet_size < 1 or max_inflight_messages < 1:
        raise BrokerLaunchError("max_packet_size and max_inflight_messages must be >= 1")
    run_dir = Path(run_dir).absolute()
    values = {
        "port": str(port),
        "bind_address": bind_address,
        "user": user if user is not None else pwd.getpwuid(os.geteuid()).pw_name,
        "persistence_dir": _conf_path(run_dir / "mosquitto-data", "run dir"),
        "log_file": _conf_path(run_dir / "mosquitto.log", "run dir"),
        "max_packet_size": str(max_packet_size),
        "max_queued_messages": str(max_queued_messages),
        "max_inflight_messages": str(max_inflight_messages),
        "security": security if security is not None else security_block(None),
        "tls": tls if tls is not None else tls_block(None),
    }
    if pid_file is not None:
        values["security"] += f"\npid_file {_conf_path(pid_file, 'pid file')}"
    try:
        return string.Template(template if template is not None else config_template()).substitute(
            values
        )
    except (KeyError, ValueError) as exc:
        raise BrokerLaunchError(f"bad Mosquitto config template: {exc!r}") from exc


async def wait_mqtt_ready(
    host: str, port: int, timeout_s: float, *, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Return once host:port answers an MQTT CONNECT (over TLS with `ssl_context`): accepted,
    or refused for want of credentials (the anonymous probe of a broker with auth on; the
    broker is up all the same). Clean session: no state is left behind."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"MQTT at {host}:{port} not ready after {timeout_s:.1f}s: {last!r}")
        try:
            async with asyncio.timeout(min(remaining, 5.0)):
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                client = aiomqtt.Client(
                    host,
                    port,
                    identifier=f"fedmoe-probe-{uuid.uuid4().hex[:12]}",
                    clean_session=True,
                    timeout=min(remaining, 5.0),
                    tls_context=ssl_context,
                )
                async with client:
                    return
        except MqttConnectError as exc:
            if _refused_for_auth(exc):
                return
            last = exc
        except (OSError, aiomqtt.MqttError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(min(_RETRY_S, max(0.0, deadline - time.monotonic())))


def _refused_for_auth(exc: MqttConnectError) -> bool:
    # MQTT 3.1.1 CONNACK 4 (bad user name or password), 5 (not authorized).
    rc = exc.rc
    return (isinstance(rc, int) and rc in (4, 5)) or getattr(rc, "value", None) in (0x86, 0x87)


class MosquittoBroker(LaunchedBroker):
    """Mosquitto on 127.0.0.1:`port` (0 = a free port, kept across restarts).

    With `registry` every client authenticates against it and its ACL applies (the broker
    writes its pid into the registry, for `fedmoe devices` to reload it); without, anonymous
    clients may do anything. With `tls` the one listener speaks TLS (`mqtts://`)."""

    name = "Mosquitto"

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int = 0,
        binary: str = "",
        max_packet_size: int = _DEFAULTS.mqtt_max_packet_size,
        max_queued_messages: int = _DEFAULTS.mqtt_max_queued_messages,
        max_inflight_messages: int = _DEFAULTS.mqtt_max_inflight_messages,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        registry: DeviceRegistry | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(
            run_dir, port=port, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
        )
        self.binary = find_mosquitto(binary)
        self.registry = registry
        self.tls = tls
        self.max_packet_size = max_packet_size
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.conf_path = self.run_dir / "mosquitto.conf"
        self.log_path = self.run_dir / "mosquitto.log"  # the broker's own log
        self.out_path = self.run_dir / "mosquitto.out"  # its stdout/stderr (startup errors)

    @classmethod
    def from_settings(
        cls,
        settings: LocalBrokerSettings,
        run_dir: Path,
        *,
        registry: DeviceRegistry | None = None,
        tls: TlsFiles | None = None,
    ) -> MosquittoBroker:
        """A broker configured by `LocalBrokerSettings` (auth and TLS as given)."""
        return cls(
            run_dir,
            registry=registry,
            tls=tls,
            port=settings.mqtt_port,
            binary=settings.mosquitto_bin,
            max_packet_size=settings.mqtt_max_packet_size,
            max_queued_messages=settings.mqtt_max_queued_messages,
            max_inflight_messages=settings.mqtt_max_inflight_messages,
            start_timeout_s=settings.start_timeout_s,
            stop_timeout_s=settings.stop_timeout_s,
        )

    @property
    def url(self) -> str:
        """The broker's URL, "mqtt://127.0.0.1:PORT" ("mqtts://" with TLS)."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://127.0.0.1:{self._require_port()}"

    async def reload(self, timeout_s: float = 5.0) -> bool:
        """SIGHUP: Mosquitto re-reads the password and ACL files and cuts the sessions that
        no longer authenticate. Returns once its log says it reloaded (it handles the next
        CONNECT after that), False when it is not running."""
        pid = self.pid
        if pid is None or not self.running:
            return False
        before = self._reloads()
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                # Only the broker's log says when it reloaded: poll it.
                while self._reloads() <= before:  # noqa: ASYNC110
                    await asyncio.sleep(_RETRY_S)
        except TimeoutError:
            raise BrokerLaunchError(
                f"Mosquitto (pid {pid}) did not log a reload within {timeout_s}s"
            ) from None
        return True

    def _reloads(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count("Reloading config.")
        except OSError:
            return 0

    def write_config(self) -> Path:
        """Render the template for the current port into `run_dir/mosquitto.conf`."""
        (self.run_dir / "mosquitto-data").mkdir(parents=True, exist_ok=True)
        text = render_config(
            port=self.port,
            run_dir=self.run_dir,
            max_packet_size=self.max_packet_size,
            max_queued_messages=self.max_queued_messages,
            max_inflight_messages=self.max_inflight_messages,
            security=security_block(
                None if self.registry is None else self.registry.path.absolute()
            ),
            tls=tls_block(self.tls),
            pid_file=None if self.registry is None else self.registry.pid_path.absolute(),
        )
        self.conf_path.write_text(text)
        return self.conf_path

    def _prepare(self) -> None:
        self.write_config()

    def _argv(self) -> list[str]:
        return [str(self.binary), "-c", str(self.conf_path)]

    @property
    def _output_path(self) -> Path:
        return self.out_path

    def _log_paths(self) -> tuple[Path, ...]:
        return (self.out_path, self.log_path)

    async def _wait_ready(self) -> None:
        context = None
        if self.tls is not None:
            context = client_ssl_context(self.tls.ca_file)
        await wait_mqtt_ready("127.0.0.1", self.port, self.start_timeout_s, ssl_context=context)
