"""TLS for the brokers: a deployment's local CA and its broker certificate (`cryptography`),
and the client-side SSL context every MQTT and Kafka client builds from a CA file.

`create_certificates(out, hosts)` writes into `out`:

- `ca.crt` / `ca.key`: the deployment's CA (EC P-256, 10 years; the key 0600). Kept when it
  already exists, so certificates issued earlier stay valid;
- `broker.crt` / `broker.key`: the brokers' server certificate signed by that CA, with every
  name in `hosts` as a subject alternative name (DNS or IP), reissued on every call;
- `broker.pem`: key and certificate in one PEM (PKCS#8), the form Kafka's PEM keystore reads.

Devices and services get only `ca.crt` (`FEDMOE_MQTT_CA_FILE`, `FEDMOE_KAFKA_CA_FILE`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from brokers.errors import BrokerError

CA_DAYS = 3650
BROKER_DAYS = 825  # the longest server certificate lifetime clients commonly accept
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


class TlsError(BrokerError):
    """A certificate or key cannot be created or read (not retriable)."""

    retriable = False


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a broker's TLS files are."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        """The files `create_certificates(directory, ...)` writes."""
        return cls(directory / "ca.crt", directory / "broker.crt", directory / "broker.key")


def client_ssl_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """A client context that verifies the server against `ca_file` (the system's trust store
    when None) and checks its host name; TLS 1.2 at least."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"CA file {ca_file}: cannot load it: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmoe-bus"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    if not cert_path.exists() and not key_path.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsError(f"CA in {out}: cannot read ca.crt / ca.key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"CA in {out}: ca.key is not an EC key")
    return cert, key


def _new_ca(
    out: Path, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("fedmoe-bus local CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca.key", _key_pem(key), 0o600)
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def create_certificates(out: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> TlsFiles:
    """The CA (kept if present) and a fresh broker certificate for `hosts` in `out`."""
    if not hosts:
        raise TlsError("the broker certificate needs at least one host name or address")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca = _load_ca(out) or _new_ca(out, now)
        ca_cert, ca_key = ca
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=BROKER_DAYS))
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        _write(out / "broker.key", _key_pem(key), 0o600)
        _write(out / "broker.crt", cert_pem, 0o644)
        _write(out / "broker.pem", _key_pem(key) + cert_pem, 0o600)
    except OSError as exc:
        raise TlsError(f"cannot write certificates to {out}: {exc}") from exc
    return TlsFiles.in_dir(out)
