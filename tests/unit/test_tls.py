"""TLS settings are checked before anything starts, and every mistake is one line naming it."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from dispatcher_service.settings import DispatcherSettings
from service_common.tls import TlsConfigError, client_tls, server_tls, server_tls_of
from subscription_service.settings import SubscriptionSettings
from tests.certificates import Pki
from webhooks_cli.connection import CliError, ExitCode, Settings, error_of
from webhooks_cli.output import Output


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"), name="unit")


def refusal(**settings: Path | None) -> str:
    """The message of the TlsConfigError that server_tls raises for these files."""
    with pytest.raises(TlsConfigError) as raised:
        server_tls(
            cert_file=settings.get("cert"),
            key_file=settings.get("key"),
            client_ca_file=settings.get("ca"),
        )
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_no_certificate_and_no_key_is_plaintext() -> None:
    assert server_tls(cert_file=None, key_file=None, client_ca_file=None) is None
    assert client_tls(ca_file=None, cert_file=None, key_file=None) is None


def test_a_server_certificate_and_key_give_tls_and_a_client_ca_mutual_tls(pki: Pki) -> None:
    tls = server_tls(
        cert_file=pki.server.cert_file, key_file=pki.server.key_file, client_ca_file=None
    )
    assert tls is not None
    assert not tls.mutual
    context = tls.ssl_context()
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_NONE
    assert isinstance(tls.grpc_credentials(), grpc.ServerCredentials)

    mutual = server_tls(
        cert_file=pki.server.cert_file, key_file=pki.server.key_file, client_ca_file=pki.ca_file
    )
    assert mutual is not None
    assert mutual.mutual
    assert mutual.ssl_context().verify_mode is ssl.CERT_REQUIRED
    assert "BEGIN" not in repr(mutual)  # the key stays out of logs and tracebacks


def test_half_a_configuration_is_refused_naming_what_is_missing(pki: Pki) -> None:
    assert refusal(cert=pki.server.cert_file) == (
        "TLS_CERT_FILE is set without TLS_KEY_FILE: TLS needs both"
    )
    assert refusal(key=pki.server.key_file) == (
        "TLS_KEY_FILE is set without TLS_CERT_FILE: TLS needs both"
    )
    assert refusal(ca=pki.ca_file) == "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE"


def test_unreadable_invalid_or_mismatched_files_are_refused(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted-key.pem"
    key = serialization.load_pem_private_key(pki.server.key_file.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"password"),
        )
    )

    assert refusal(cert=missing, key=pki.server.key_file) == (
        f"TLS_CERT_FILE: cannot read {missing}: No such file or directory"
    )
    assert refusal(cert=garbage, key=pki.server.key_file) == (
        f"TLS_CERT_FILE: {garbage} holds no PEM certificate"
    )
    assert refusal(cert=pki.server.cert_file, key=garbage) == (
        f"TLS_KEY_FILE: {garbage} holds no unencrypted PEM private key"
    )
    assert refusal(cert=pki.server.cert_file, key=encrypted) == (
        f"TLS_KEY_FILE: {encrypted} holds no unencrypted PEM private key"
    )
    assert refusal(cert=pki.server.cert_file, key=pki.client.key_file) == (
        f"TLS_KEY_FILE: the key in {pki.client.key_file} does not match the certificate in "
        f"{pki.server.cert_file}"
    )
    assert refusal(cert=pki.server.cert_file, key=pki.server.key_file, ca=garbage) == (
        f"TLS_CLIENT_CA_FILE: {garbage} holds no PEM certificate"
    )


def test_errors_name_the_environment_variables_of_each_service(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"^SUBSCRIPTIONS_TLS_KEY_FILE is set without"):
        server_tls_of(SubscriptionSettings(tls_key_file=pki.server.key_file))
    with pytest.raises(TlsConfigError, match=r"^DISPATCHER_TLS_CERT_FILE: cannot read"):
        server_tls_of(
            DispatcherSettings(
                tls_cert_file=tmp_path / "missing.pem", tls_key_file=pki.server.key_file
            )
        )
    # A TlsConfigError is a ValueError: `python -m <service>` reports it as one line.
    assert issubclass(TlsConfigError, ValueError)


def test_a_client_needs_the_ca_for_tls_and_both_halves_of_a_certificate(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="TLS_CERT_FILE is set without TLS_CA_FILE"):
        client_tls(ca_file=None, cert_file=pki.client.cert_file, key_file=pki.client.key_file)
    with pytest.raises(TlsConfigError, match="TLS_CERT_FILE is set without TLS_KEY_FILE"):
        client_tls(ca_file=pki.ca_file, cert_file=pki.client.cert_file, key_file=None)
    server_only = client_tls(ca_file=pki.ca_file, cert_file=None, key_file=None)
    assert server_only is not None
    assert server_only.private_key is None
    mutual = client_tls(
        ca_file=pki.ca_file, cert_file=pki.client.cert_file, key_file=pki.client.key_file
    )
    assert mutual is not None
    assert mutual.certificate_chain == pki.client.cert_file.read_bytes()
    context = mutual.ssl_context()
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert isinstance(mutual.grpc_credentials(), grpc.ChannelCredentials)


def cli_settings(**files: Path | None) -> Settings:
    return Settings(
        subscriptions_addr="127.0.0.1:1",
        dispatcher_addr="127.0.0.1:2",
        output=Output.TABLE,
        timeout=1.0,
        ca_file=files.get("ca"),
        cert_file=files.get("cert"),
        key_file=files.get("key"),
    )


def test_the_cli_refuses_half_a_client_certificate_as_a_usage_error(pki: Pki) -> None:
    assert cli_settings().channel_credentials() is None
    assert cli_settings(ca=pki.ca_file).channel_credentials() is not None
    with pytest.raises(CliError) as raised:
        cli_settings(ca=pki.ca_file, cert=pki.client.cert_file).channel_credentials()
    assert raised.value.exit_code is ExitCode.USAGE
    assert (
        raised.value.message
        == "--cert-file is set without --key-file: a client certificate needs both"
    )


class _FailedCall(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


def test_the_cli_words_a_failed_handshake_for_people() -> None:
    untrusted = _FailedCall(
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Tls "
        "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
        "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer "
        "certificate: OK"
    )
    error = error_of(untrusted, addr="127.0.0.1:5", tls=True)
    assert error.exit_code is ExitCode.UNAVAILABLE
    assert error.message.startswith(
        "TLS handshake with 127.0.0.1:5 failed: its certificate is not signed by the CA of "
        "--ca-file, or is not for this host ("
    )
    assert "unable to get local issuer certificate" in error.message

    closed = _FailedCall(
        "failed to connect to all addresses; last error: UNAVAILABLE: Socket closed"
    )
    error = error_of(closed, addr="127.0.0.1:5", tls=True)
    assert error.exit_code is ExitCode.UNAVAILABLE
    assert "may require a client certificate" in error.message
    plaintext_server = _FailedCall(
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Tls "
        "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL "
        "routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification context"
    )
    assert error_of(plaintext_server, addr="127.0.0.1:5", tls=True).message == (
        "TLS handshake with 127.0.0.1:5 failed: it does not speak TLS there (WRONG_VERSION_NUMBER)"
    )
    # Without TLS the words are gRPC's, as before.
    plain = error_of(closed, addr="127.0.0.1:5")
    assert plain.message.startswith("cannot reach 127.0.0.1:5: failed to connect")
