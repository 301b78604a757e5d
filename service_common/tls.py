"""TLS for the services and their clients: files checked at start, then credentials and contexts.

A server with a certificate and key serves TLS only; with a client CA as well it asks every
client for a certificate signed by that CA (mutual TLS). Every file is read and checked once,
before anything listens, so a wrong setting ends the start with one line naming it instead of
a server that refuses every handshake.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:  # the command line imports this module, and needs no settings machinery
    from service_common.settings import ServiceSettings

__all__ = [
    "ClientTls",
    "ServerTls",
    "TlsConfigError",
    "client_tls",
    "server_tls",
    "server_tls_of",
]

log = logging.getLogger(__name__)

_PUBLIC_KEY_INFO = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TlsConfigError(ValueError):
    """A TLS setting is incomplete, or names a file that is unreadable or not what it should be."""


@dataclass(frozen=True)
class ServerTls:
    """A server's checked certificate chain and key, and the CA of its clients (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.mutual,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server context: TLS 1.2 or later, client certificates required under mutual TLS."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.client_ca.decode("ascii"))
        return context


@dataclass(frozen=True)
class ClientTls:
    """The CA a client trusts, and the certificate and key it shows under mutual TLS."""

    ca_file: Path
    cert_file: Path | None
    key_file: Path | None
    ca: bytes = field(repr=False)
    certificate_chain: bytes | None = field(repr=False)
    private_key: bytes | None = field(repr=False)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only `ca_file` and checks the server's host name."""
        context = ssl.create_default_context(cadata=self.ca.decode("ascii"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def server_tls(
    *,
    cert_file: Path | None,
    key_file: Path | None,
    client_ca_file: Path | None,
    names: tuple[str, str, str] = ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"),
) -> ServerTls | None:
    """The checked server TLS of these settings; None when neither certificate nor key is set.

    `names` are the settings' names (environment variables) that errors mention.
    """
    cert_name, key_name, ca_name = names
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise TlsConfigError(f"{ca_name} needs {cert_name} and {key_name}")
        return None
    if cert_file is None or key_file is None:
        given, missing = (cert_name, key_name) if key_file is None else (key_name, cert_name)
        raise TlsConfigError(f"{given} is set without {missing}: TLS needs both")
    chain, key = _checked_pair(cert_file, key_file, cert_name, key_name)
    client_ca = _checked_ca(client_ca_file, ca_name) if client_ca_file is not None else None
    tls = ServerTls(
        cert_file=cert_file,
        key_file=key_file,
        client_ca_file=client_ca_file,
        certificate_chain=chain,
        private_key=key,
        client_ca=client_ca,
    )
    _check_context(tls.ssl_context, cert_name)
    return tls


def tls_note(settings: ServiceSettings) -> str:
    """How a service's ports are served, for its start-up log: "", " with TLS" or
    " with TLS (mutual TLS)"."""
    if settings.tls_cert_file is None:
        return ""
    return " with TLS (mutual TLS)" if settings.tls_client_ca_file is not None else " with TLS"


def server_tls_of(settings: ServiceSettings) -> ServerTls | None:
    """The checked server TLS of a service's `*_TLS_*` settings, named with its prefix."""
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    return server_tls(
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        client_ca_file=settings.tls_client_ca_file,
        names=(f"{prefix}TLS_CERT_FILE", f"{prefix}TLS_KEY_FILE", f"{prefix}TLS_CLIENT_CA_FILE"),
    )


def client_tls(
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    names: tuple[str, str, str] = ("TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE"),
) -> ClientTls | None:
    """The checked client TLS of these settings; None (plaintext) when no CA is set."""
    ca_name, cert_name, key_name = names
    if ca_file is None:
        if cert_file is not None or key_file is not None:
            given = cert_name if cert_file is not None else key_name
            raise TlsConfigError(f"{given} is set without {ca_name}: TLS needs the server's CA")
        return None
    if (cert_file is None) != (key_file is None):
        given, missing = (cert_name, key_name) if key_file is None else (key_name, cert_name)
        raise TlsConfigError(f"{given} is set without {missing}: a client certificate needs both")
    ca = _checked_ca(ca_file, ca_name)
    chain = key = None
    if cert_file is not None and key_file is not None:
        chain, key = _checked_pair(cert_file, key_file, cert_name, key_name)
    tls = ClientTls(
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        ca=ca,
        certificate_chain=chain,
        private_key=key,
    )
    _check_context(tls.ssl_context, ca_name)
    return tls


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise TlsConfigError(f"{name}: cannot read {path}: {reason}") from None


def _certificates(data: bytes, path: Path, name: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"{name}: {path} holds no PEM certificate") from None


def _checked_ca(path: Path, name: str) -> bytes:
    data = _read(path, name)
    _certificates(data, path, name)
    return data


def _checked_pair(
    cert_file: Path, key_file: Path, cert_name: str, key_name: str
) -> tuple[bytes, bytes]:
    chain = _read(cert_file, cert_name)
    leaf = _certificates(chain, cert_file, cert_name)[0]
    key_data = _read(key_file, key_name)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError):
        # TypeError: the key is encrypted; nothing could ask for its password.
        raise TlsConfigError(
            f"{key_name}: {key_file} holds no unencrypted PEM private key"
        ) from None
    except UnsupportedAlgorithm as error:
        raise TlsConfigError(f"{key_name}: {key_file}: {error}") from None
    if leaf.public_key().public_bytes(*_PUBLIC_KEY_INFO) != key.public_key().public_bytes(
        *_PUBLIC_KEY_INFO
    ):
        raise TlsConfigError(
            f"{key_name}: the key in {key_file} does not match the certificate in {cert_file}"
        )
    if leaf.not_valid_after_utc < datetime.now(UTC):
        # Still served: refusing to start would not bring a renewed certificate any sooner.
        log.warning("the certificate in %s expired on %s", cert_file, leaf.not_valid_after_utc)
    return chain, key_data


def _check_context(make: Callable[[], ssl.SSLContext], name: str) -> None:
    # What the checks above let through and OpenSSL still refuses (an unsupported key type).
    try:
        make()
    except (ssl.SSLError, ValueError) as error:
        raise TlsConfigError(f"{name}: OpenSSL refuses the TLS files: {error}") from None
