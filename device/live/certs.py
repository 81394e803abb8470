"""Self-signed TLS certificates for the local Live API simulator.

The google-genai SDK always opens ``wss://`` for an API-key client, so a loopback simulator
must speak TLS with a certificate the test client trusts.  Each simulator makes its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertPaths:
    """Where a generated certificate and its private key were written (PEM)."""

    cert_file: Path
    key_file: Path


def make_self_signed(
    directory: Path | str | None = None,
    *,
    common_name: str = "talkie-live-simulator",
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    days: int = 7,
) -> CertPaths:
    """Make a self-signed certificate valid for ``localhost`` and ``127.0.0.1``.

    Written to ``directory`` (created if needed) or to a fresh temporary directory.
    An EC P-256 key keeps generation in the millisecond range.
    """
    out = (
        Path(directory)
        if directory is not None
        else Path(tempfile.mkdtemp(prefix="talkie-sim-"))
    )
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(d) for d in dns_names] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        # CA:TRUE so the certificate can be its own trust anchor in ssl.create_default_context.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = out / "sim-cert.pem"
    key_file = out / "sim-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return CertPaths(cert_file=cert_file, key_file=key_file)
