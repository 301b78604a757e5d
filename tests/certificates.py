"""Throwaway certificates for tests: a CA, a server certificate for localhost, client ones.

Keys are P-256 (fast to make). `Pki.make(directory)` writes every file as PEM and returns
their paths; each call makes a new CA, so two calls give two CAs that do not trust each other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "Pki"]

_VALIDITY = timedelta(days=2)
# Clocks of a test machine may lag a little; a certificate valid only from now would fail.
_BACKDATE = timedelta(hours=1)


@dataclass(frozen=True)
class Issued:
    """A certificate's PEM file and its key's PEM file."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Pki:
    """A CA and what it signed, as files in one directory."""

    ca_file: Path
    ca_key_file: Path
    server: Issued
    client: Issued

    @classmethod
    def make(cls, directory: Path, *, name: str = "test") -> Pki:
        """A new CA `name`, a server certificate (localhost, 127.0.0.1) and a client one."""
        directory.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        now = datetime.now(UTC)
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        ca_file = directory / f"{name}-ca.pem"
        ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        ca_key_file = _write_key(directory / f"{name}-ca-key.pem", ca_key)
        server = issue(
            ca_cert,
            ca_key,
            directory,
            f"{name}-server",
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        )
        client = issue(
            ca_cert,
            ca_key,
            directory,
            f"{name}-client",
            sans=[x509.DNSName("client.test")],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        return cls(ca_file=ca_file, ca_key_file=ca_key_file, server=server, client=client)


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    directory: Path,
    name: str,
    *,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> Issued:
    """A certificate signed by the CA, for `sans`, with one extended key usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file = directory / f"{name}.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_file=cert_file, key_file=_write_key(directory / f"{name}-key.pem", key))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path
