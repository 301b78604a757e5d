"""Channels to the services, the bearer token, and gRPC errors as exit codes.

Every call goes through `Client.call` (or `Client.stream`), so a failed call always ends
the command the same way: one line on stderr (plus one line per wrong field) and the exit
code of its status, never a traceback.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar, cast

import grpc
import typer
from grpc_status import rpc_status

from service_common.status_details import field_violations
from service_common.tls import TlsConfigError, client_tls
from webhooks_cli.output import Output

__all__ = [
    "CliError",
    "Client",
    "ExitCode",
    "Settings",
    "collect_pages",
    "error_of",
    "settings_of",
]

Request = TypeVar("Request")
Response = TypeVar("Response")
Item = TypeVar("Item")


class ExitCode(enum.IntEnum):
    """What a script can rely on; documented in `webhooks --help`."""

    OK = 0
    PARTIAL = 1
    USAGE = 2
    NOT_FOUND = 3
    DENIED = 4
    INVALID = 5
    UNAVAILABLE = 6
    CONFLICT = 7


_EXIT_CODES = {
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.DENIED,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.DENIED,
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.INVALID,
    grpc.StatusCode.OUT_OF_RANGE: ExitCode.INVALID,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.CONFLICT,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.CONFLICT,
    grpc.StatusCode.ABORTED: ExitCode.CONFLICT,
}


class CliError(Exception):
    """A failure that ends the command: a one-line message, the wrong fields, an exit code."""

    def __init__(
        self,
        message: str,
        exit_code: ExitCode = ExitCode.PARTIAL,
        violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.violations = violations or []

    def show(self) -> None:
        sys.stderr.write(f"error: {_one_line(self.message)}\n")
        for name, description in self.violations:
            sys.stderr.write(f"  {name}: {_one_line(description)}\n")


# How gRPC words a failed TLS handshake in the status details (its words vary by version).
_HANDSHAKE_FAILED = ("handshake failed", "certificate_verify_failed", "tsi_protocol_failure")


def error_of(error: grpc.RpcError, *, addr: str, tls: bool = False) -> CliError:
    """The CliError of a failed call to the service at `addr` (over TLS when `tls`)."""
    call = _call_of(error)
    code = call.code() if call else grpc.StatusCode.UNKNOWN
    details = (call.details() if call else None) or code.name.lower()
    exit_code = _EXIT_CODES.get(code, ExitCode.PARTIAL)
    if code is grpc.StatusCode.UNAVAILABLE:
        if tls and "WRONG_VERSION_NUMBER" in details:
            return CliError(
                f"TLS handshake with {addr} failed: it does not speak TLS there "
                f"(WRONG_VERSION_NUMBER)",
                exit_code,
            )
        if tls and any(words in details.lower() for words in _HANDSHAKE_FAILED):
            return CliError(
                f"TLS handshake with {addr} failed: its certificate is not signed by the CA "
                f"of --ca-file, or is not for this host ({_reason(details)})",
                exit_code,
            )
        if tls and "socket closed" in details.lower():
            # Under mutual TLS the server closes the connection on a refused client
            # certificate, so the client learns nothing more specific than this.
            return CliError(
                f"cannot reach {addr} over TLS: the server closed the connection during the "
                "handshake; it may require a client certificate (--cert-file, --key-file) "
                f"signed by a CA it trusts ({code.name})",
                exit_code,
            )
        if call is not None and _answered(call):
            # The service itself is up but cannot serve the call now (say, the dispatcher
            # while its routing waits for the subscription service).
            return CliError(f"{addr} answered: {details} ({code.name})", exit_code)
        return CliError(f"cannot reach {addr}: {details} ({code.name})", exit_code)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"{addr} did not answer in time: {details} ({code.name})", exit_code)
    violations = field_violations(call) if call else []
    if violations:
        # The status message repeats the first violations; each is printed on its own line.
        return CliError(f"the request was refused ({code.name})", exit_code, violations)
    return CliError(f"{details} ({code.name})", exit_code)


def _answered(call: grpc.Call) -> bool:
    """Whether the service sent this status itself: the services attach a google.rpc.Status
    to every error they answer, which gRPC never does for a call that reached no one."""
    if not hasattr(call, "trailing_metadata"):  # an error raised before any call was made
        return False
    try:
        return rpc_status.from_call(call) is not None
    except ValueError:  # details that contradict the status: still the service's own
        return True


def _reason(details: str) -> str:
    # The last words of gRPC's details name the OpenSSL reason, the part a person can act on.
    marker = "CERTIFICATE_VERIFY_FAILED"
    if marker not in details:
        return details
    words = details[details.index(marker) :].split(":")
    return f"{marker}: {words[1].strip()}" if len(words) > 1 else marker


def _call_of(error: grpc.RpcError) -> grpc.Call | None:
    # Errors of the sync API are also the call (code, details, trailers); the stubs miss that.
    return cast(grpc.Call, error) if hasattr(error, "code") and hasattr(error, "details") else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Settings:
    """The global options, resolved: where the services are and who is calling."""

    subscriptions_addr: str
    dispatcher_addr: str
    output: Output
    timeout: float
    tenant: str = ""
    # Exactly one of these, or neither; read only when a call is made, so --help always works.
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    # TLS when ca_file is set; cert_file and key_file add a client certificate (mutual TLS).
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """The TLS credentials of --ca-file (with --cert-file, --key-file); None: plaintext."""
        try:
            tls = client_tls(
                ca_file=self.ca_file,
                cert_file=self.cert_file,
                key_file=self.key_file,
                names=("--ca-file", "--cert-file", "--key-file"),
            )
        except TlsConfigError as error:
            raise CliError(str(error), ExitCode.USAGE) from None
        return tls.grpc_credentials() if tls is not None else None

    def bearer_token(self) -> str:
        if self.token is not None:
            token = self.token.strip()
        elif self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or type(error).__name__
                raise CliError(
                    f"cannot read the token file {self.token_file}: {reason}", ExitCode.USAGE
                ) from None
        else:
            token = ""
        if not token:
            raise CliError(
                "no token: give --token-file or --token (or WEBHOOKS_TOKEN_FILE, WEBHOOKS_TOKEN)",
                ExitCode.DENIED,
            )
        return token


class Client:
    """One channel to one service, with the caller's token on every call."""

    def __init__(self, settings: Settings, addr: str) -> None:
        self.addr = addr
        self.timeout = settings.timeout
        self._metadata = (("authorization", f"Bearer {settings.bearer_token()}"),)
        credentials = settings.channel_credentials()
        self.tls = credentials is not None
        self.channel = (
            grpc.insecure_channel(addr)
            if credentials is None
            else grpc.secure_channel(addr, credentials)
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.channel.close()

    def call(
        self, method: grpc.UnaryUnaryMultiCallable[Request, Response], request: Request
    ) -> Response:
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise error_of(error, addr=self.addr, tls=self.tls) from None

    def stream(
        self,
        method: grpc.StreamStreamMultiCallable[Request, Response],
        requests: Iterator[Request],
        *,
        timeout: float,
    ) -> Iterator[Response]:
        """The answers of a bidirectional stream; a failure raises CliError."""
        try:
            yield from method(requests, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise error_of(error, addr=self.addr, tls=self.tls) from None


def settings_of(ctx: typer.Context) -> Settings:
    """The global options, as the `webhooks` callback resolved them."""
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def collect_pages(
    fetch: Callable[[str, int], tuple[Sequence[Item], str]], *, limit: int, page_size: int
) -> list[Item]:
    """Follows page tokens until the last page, or until `limit` items (0: no limit)."""
    found: list[Item] = []
    token = ""
    seen: set[str] = set()
    while True:
        wanted = page_size if limit == 0 else min(page_size, limit - len(found))
        items, token = fetch(token, wanted)
        found.extend(items)
        if limit and len(found) >= limit:
            return found[:limit]
        # A token seen before would page forever.
        if not token or token in seen:
            return found
        seen.add(token)
