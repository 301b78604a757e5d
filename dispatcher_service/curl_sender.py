"""Sends delivery attempts through libcurl (pycurl), driven from a thread of its own.

Measured in `bench/http_post_rate.py`, libcurl posts at about four times aiohttp's rate
for a quarter of its CPU per request: the transfers run in C with the GIL released while
they wait, and the event loop only hands requests over and takes results back in batches.

What an attempt promises, as with `http_sender.HttpSender` (error texts follow `sending`):

    SSRF policy     URLs are checked once (`sending.CheckedTargets`); a name is resolved by
                    the given resolver and every address checked (`ssrf.resolve_checked`),
                    then pinned for curl (CURLOPT_RESOLVE), which never looks it up again;
                    every socket curl opens is checked once more, at connect time, against
                    the address it is about to connect to (CURLOPT_OPENSOCKETFUNCTION)
    no redirects    3xx is a result; curl follows nothing and speaks only http and https
    bounded answer  at most `max_response_bytes` of a body are read; then the transfer ends
    timeouts        connect, and total (handshake, request, headers, the bounded body)
    limits          curl opens at most `per_host_limit` connections to one host and
                    `total_limit` in all; the delivery worker owns the slots themselves
    no ambient      no proxy from the environment, no cookies, identity encoding only
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pycurl
import yarl

from dispatcher_service.curl_multi import MultiDriver, Outcome
from dispatcher_service.sending import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_USER_AGENT,
    MAX_RETRY_AFTER_CHARS,
    AttemptResult,
    CheckedTargets,
    Timeouts,
    redirect_error,
)
from dispatcher_service.ssrf import (
    IPAddress,
    Resolver,
    TargetPolicy,
    TargetRefused,
    check_address,
    check_host_literal,
    parse_ip_literal,
    resolve_checked,
    system_resolver,
)

__all__ = ["CurlSender"]

# How long a name's checked addresses are used before it is resolved again.
DEFAULT_DNS_TTL = 10.0
_TLS_ERRORS = frozenset(
    getattr(pycurl, name)
    for name in (
        "E_SSL_CONNECT_ERROR",
        "E_PEER_FAILED_VERIFICATION",
        "E_SSL_CACERT_BADFILE",
        "E_SSL_CERTPROBLEM",
        "E_SSL_CIPHER",
        "E_SSL_ISSUER_ERROR",
        "E_SSL_INVALIDCERTSTATUS",
        "E_SSL_PINNEDPUBKEYNOTMATCH",
        "E_SSL_CRL_BADFILE",
        "E_SSL_SHUTDOWN_FAILED",
    )
    if hasattr(pycurl, name)
)


class CurlSender:
    """Posts webhook bodies; one instance per process, shared by all workers.

    Construct it inside the running event loop that calls `send`; `aclose()` when done.
    `ca_pem` trusts only the given certificates (PEM); by default the system's store.
    """

    def __init__(
        self,
        *,
        policy: TargetPolicy,
        timeouts: Timeouts | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        per_host_limit: int = 16,
        total_limit: int = 256,
        user_agent: str = DEFAULT_USER_AGENT,
        resolver: Resolver = system_resolver,
        ca_pem: bytes | None = None,
        dns_ttl: float = DEFAULT_DNS_TTL,
    ) -> None:
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes cannot be negative")
        self._timeouts = timeouts or Timeouts()
        self._targets = CheckedTargets(policy)
        self._pins = _Pins(policy, resolver=resolver, ttl=dns_ttl)
        self._options = _fixed_options(self._timeouts, user_agent=user_agent, ca_pem=ca_pem)
        self._limits = (policy, max_response_bytes)
        self._idle: list[_Transfer] = []
        self._driver = MultiDriver(
            asyncio.get_running_loop(), per_host_limit=per_host_limit, total_limit=total_limit
        )

    async def __aenter__(self) -> CurlSender:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._driver.aclose()
        for transfer in self._idle:
            transfer.curl.close()
        self._idle.clear()

    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        """POSTs `body` to `url` once. Failures are results, not exceptions."""
        target = self._targets.check(url)
        if isinstance(target, str):
            return AttemptResult.failed(target)
        started = time.perf_counter()
        try:
            pin = await self._pins.pin(target)
        except TargetRefused as exc:
            return AttemptResult.failed(f"target refused: {exc}")
        except OSError as exc:
            latency = time.perf_counter() - started
            return AttemptResult.failed(f"DNS error: {target.host}: {exc}", latency=latency)
        transfer = self._idle.pop() if self._idle else self._new_transfer()
        transfer.prepare(str(target), body=body, headers=headers, pin=pin)
        transfer.future = future = asyncio.get_running_loop().create_future()
        self._driver.submit(transfer)
        try:
            outcome = await future
        except asyncio.CancelledError:
            # curl still owns the handle: it is reused only once its transfer ends.
            transfer.release = self._idle.append
            raise
        self._idle.append(transfer)
        return transfer.result(outcome, self._timeouts, latency=time.perf_counter() - started)

    def _new_transfer(self) -> _Transfer:
        policy, max_response_bytes = self._limits
        return _Transfer(self._options, policy=policy, max_response_bytes=max_response_bytes)


class _Pins:
    """The checked addresses of each host:port, as CURLOPT_RESOLVE entries.

    A name is resolved once per `ttl` however many attempts go to it meanwhile (they
    share one lookup); a failed lookup is not remembered. An IP literal needs no pin.
    """

    def __init__(self, policy: TargetPolicy, *, resolver: Resolver, ttl: float) -> None:
        self._policy = policy
        self._resolver = resolver
        self._ttl = ttl
        self._entries: dict[tuple[str, int], tuple[float, asyncio.Future[str | None]]] = {}

    async def pin(self, url: yarl.URL) -> str | None:
        key = (url.raw_host or "", url.port or 0)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now and entry[1].done() and not entry[1].exception():
            return entry[1].result()
        if entry is None or entry[0] <= now:
            if len(self._entries) >= 10_000:
                self._entries.clear()
            entry = (now + self._ttl, asyncio.ensure_future(self._resolve(*key)))
            self._entries[key] = entry
        try:
            return await asyncio.shield(entry[1])
        except (TargetRefused, OSError):
            if self._entries.get(key) is entry:
                del self._entries[key]
            raise

    async def _resolve(self, host: str, port: int) -> str | None:
        if check_host_literal(host, self._policy) is not None:
            return None
        addresses = await resolve_checked(host, port, self._policy, resolver=self._resolver)
        return f"{host}:{port}:{','.join(_curl_address(ip) for ip in addresses)}"


def _curl_address(ip: IPAddress) -> str:
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _system_ca() -> Outcome:
    """The system's trust store as Python's ssl module finds it (SSL_CERT_FILE and
    SSL_CERT_DIR included), for a libcurl whose own default path may be another OS's."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile:
        return pycurl.CAINFO, paths.cafile
    return pycurl.CAPATH, paths.capath or paths.openssl_capath


def _fixed_options(timeouts: Timeouts, *, user_agent: str, ca_pem: bytes | None) -> list[Any]:
    """The options every transfer has, set once per reusable handle."""
    trust = (pycurl.CAINFO_BLOB, ca_pem) if ca_pem is not None else _system_ca()
    web = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
    return [
        (pycurl.NOSIGNAL, 1),
        (pycurl.PROTOCOLS, web),
        (pycurl.REDIR_PROTOCOLS, web),
        (pycurl.FOLLOWLOCATION, 0),
        # An empty proxy disables the environment's, which would resolve names itself.
        (pycurl.PROXY, ""),
        (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
        (pycurl.CONNECTTIMEOUT_MS, max(1, round(timeouts.connect * 1000))),
        (pycurl.TIMEOUT_MS, max(1, round(timeouts.total * 1000))),
        (pycurl.USERAGENT, user_agent),
        (pycurl.SSL_VERIFYPEER, 1),
        (pycurl.SSL_VERIFYHOST, 2),
        trust,
    ]


class _Transfer:
    """One reusable curl handle and what its current attempt has received so far.

    Its callbacks run on the driver thread while the transfer is in the multi handle;
    the loop reads the fields only after the transfer has finished.
    """

    def __init__(
        self, options: Sequence[Any], *, policy: TargetPolicy, max_response_bytes: int
    ) -> None:
        self.curl = pycurl.Curl()
        for option, value in options:
            self.curl.setopt(option, value)
        self.curl.setopt(pycurl.WRITEFUNCTION, self._write)
        # A C method, so the header lines cost no Python call on the driver thread; they
        # are read on the loop, and only from an answer that is not a success.
        self._headers = bytearray()
        self.curl.setopt(pycurl.HEADERFUNCTION, self._headers.extend)
        self.curl.setopt(pycurl.OPENSOCKETFUNCTION, self._open_socket)
        self._policy = policy
        self._limit = max_response_bytes
        self._pin: str | None = None
        self.future: asyncio.Future[Outcome] | None = None
        self.release: Callable[[_Transfer], object] | None = None
        self._reset()

    def _reset(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._capped = False
        self._refused: str | None = None
        self._headers.clear()

    def prepare(
        self, url: str, *, body: bytes, headers: Mapping[str, str], pin: str | None
    ) -> None:
        self._reset()
        curl = self.curl
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.POSTFIELDS, body)
        lines = [f"{name}: {value}" for name, value in headers.items()]
        # No 100-continue round trip, and a body the snippet can show as it came.
        lines += ["Expect:", "Accept-Encoding: identity"]
        curl.setopt(pycurl.HTTPHEADER, lines)
        if pin != self._pin:
            curl.setopt(pycurl.RESOLVE, [pin] if pin else [])
            self._pin = pin

    def finish(self, outcome: Outcome) -> None:
        """On the loop, once curl is done with the handle: the outcome to its waiter, or,
        if the waiter gave up, the handle back to whoever `release` names."""
        if self.future is not None and not self.future.done():
            self.future.set_result(outcome)
        elif self.release is not None:
            release, self.release = self.release, None
            release(self)

    def result(self, outcome: Outcome, timeouts: Timeouts, *, latency: float) -> AttemptResult:
        code, message = outcome
        status = self.curl.getinfo(pycurl.RESPONSE_CODE) or None
        error = None if code == 0 else self._describe(code, message, timeouts)
        if status is None:
            return AttemptResult.failed(error or "no response", latency=latency)
        if error is not None:
            error = f"reading the response: {error}"
        return AttemptResult(
            status_code=status,
            latency=latency,
            error=error or redirect_error(status, self._header(status, b"location")),
            response_snippet=b"".join(self._chunks).decode("utf-8", errors="replace"),
            retry_after=self._header(status, b"retry-after", limit=MAX_RETRY_AFTER_CHARS),
        )

    def _header(self, status: int, name: bytes, *, limit: int | None = None) -> str | None:
        """A header of the final answer, read only when the answer is not a success."""
        if 200 <= status <= 299:
            return None
        value = header_value(bytes(self._headers), name)
        return None if value is None else value[:limit]

    def _describe(self, code: int, message: str, timeouts: Timeouts) -> str | None:
        """An error text with a stable prefix; curl's own message carries the detail."""
        if code == pycurl.E_WRITE_ERROR and self._capped:
            return None  # the bounded part was read; the rest never will be
        if self._refused is not None:
            return f"target refused: {self._refused}"
        if code == pycurl.E_OPERATION_TIMEDOUT:
            # Waiting for a connection under the sender's caps counts as connecting.
            connected = bool(self.curl.getinfo(pycurl.PRIMARY_IP))
            if not connected:
                return f"timeout: no connection within {timeouts.connect}s"
            return timeouts.total_exceeded()
        if code == pycurl.E_COULDNT_RESOLVE_HOST:
            return f"DNS error: {message}"
        if code in _TLS_ERRORS:
            return f"TLS error: {message}"
        return f"connection error: {message} (curl error {code})"

    # --- callbacks, on the driver thread --------------------------------------------------

    def _write(self, data: bytes) -> int | None:
        room = self._limit - self._size
        if room > 0:
            self._chunks.append(data[:room])
            self._size += min(room, len(data))
        if len(data) <= room:
            return None
        self._capped = True
        return 0  # ends the transfer: the rest of the body is never read

    def _open_socket(self, _purpose: int, address: Any) -> _OpenedSocket | int:
        """The last check: the address curl is about to connect to, whatever led it there."""
        ip = parse_ip_literal(address.addr[0].split("%", 1)[0])
        refused = "not an IP address" if ip is None else check_address(ip, self._policy)
        if refused is not None:
            self._refused = f"{address.addr[0]} is not allowed ({refused})"
            return pycurl.SOCKET_BAD
        return _OpenedSocket(socket.socket(address.family, address.socktype, address.protocol))


def header_value(block: bytes, name: bytes) -> str | None:
    """The last value of header `name` (lower case) in the final response of `block`, the
    header lines curl received (those of any 1xx answer first, each after its status line)."""
    value = None
    for line in block.split(b"\r\n"):
        if line.startswith(b"HTTP/"):
            value = None  # a new answer: only the final one's headers count
            continue
        field, colon, rest = line.partition(b":")
        if colon and field.strip().lower() == name:
            value = rest.strip().decode("latin-1")
    return value


class _OpenedSocket:
    """What the open-socket callback returns: pycurl connects a duplicate of the
    descriptor, and the original is closed as soon as pycurl lets go of this."""

    def __init__(self, opened: socket.socket) -> None:
        self._fd = opened.detach()

    def fileno(self) -> int:
        return self._fd

    def __del__(self) -> None:
        os.close(self._fd)
