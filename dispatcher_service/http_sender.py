"""Sends one delivery attempt over HTTP and reports what happened, never raising.

Built on aiohttp directly. In `bench/http_post_rate.py` httpx's own pool manages a
small fraction of aiohttp's rate, and the httpx API over aiohttp (`httpx-aiohttp`) about
half of it, the rest going to httpx's request, response and cookie models. Nothing here
needs that API: `HttpSender` itself is the seam the dispatcher depends on.

Every attempt goes through three gates, in order:

    SSRF policy     literal IPs are checked before anything else; names are resolved once
                    by `CheckedResolver`, and aiohttp connects only to the checked addresses
    endpoint slot   at most `per_host_limit` attempts in flight to one scheme://host:port,
                    and at most `total_limit` overall, so one slow endpoint only ever
                    holds its own slots (off for a caller that keeps to both itself, as
                    the delivery worker does)
    timeouts        connect, and total (headers plus the bounded part of the body)

Error texts start with a stable prefix that callers may match on: `target refused:`,
`endpoint busy:`, `invalid URL:`, `timeout:`, `DNS error:`, `TLS error:`,
`connection error:`, `redirect not followed:`; a response whose body then failed keeps its
status and gets `reading the response:` before one of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from dispatcher_service.ssrf import (
    IPAddress,
    Resolver,
    TargetPolicy,
    TargetRefused,
    check_host_literal,
    resolve_checked,
    system_resolver,
)

__all__ = [
    "DEFAULT_USER_AGENT",
    "AttemptResult",
    "CheckedResolver",
    "HttpSender",
    "Timeouts",
    "endpoint_of",
]

DEFAULT_USER_AGENT = "webhooks-dispatcher/0.1"
# Matches the attempt table's response_snippet column; enough to show a receiver's error.
DEFAULT_MAX_RESPONSE_BYTES = 2048
_MAX_RETRY_AFTER_CHARS = 64
_MAX_LOCATION_CHARS = 200
# Checked URLs kept; the table is emptied when full, so it stays bounded.
_MAX_REMEMBERED_TARGETS = 10_000


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Seconds allowed for each part of an attempt.

    `connect` bounds the TCP (and TLS) handshake; `total` bounds everything after a slot
    is free: handshake, request, response headers and the bounded part of the body.
    `slot_wait` bounds the wait for a free endpoint slot; None means as long as `total`.
    """

    connect: float = 5.0
    total: float = 15.0
    slot_wait: float | None = None

    def __post_init__(self) -> None:
        waits = (self.connect, self.total, self.slot_wait)
        if any(w is not None and not w > 0 for w in waits):
            raise ValueError("timeouts must be positive")


@dataclass(frozen=True, kw_only=True)
class AttemptResult:
    """What one attempt produced; `status_code` is None when no response arrived."""

    status_code: int | None
    # Seconds from the start of the request (after the slot wait) to its end.
    latency: float
    error: str | None
    response_snippet: str
    # The raw header, for `retry.parse_retry_after`; None when absent.
    retry_after: str | None

    @classmethod
    def failed(cls, error: str, *, latency: float = 0.0) -> AttemptResult:
        return cls(
            status_code=None,
            latency=latency,
            error=error,
            response_snippet="",
            retry_after=None,
        )


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver hook, answering only with addresses the policy allows.

    aiohttp connects to the returned `host` (an IP) and keeps using the original name for
    the Host header and TLS SNI, so certificates are still checked against the name.
    """

    def __init__(self, *, policy: TargetPolicy, resolver: Resolver = system_resolver) -> None:
        self._policy = policy
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await resolve_checked(host, port, self._policy, resolver=self._resolver)
        return [_resolve_result(host, port, ip) for ip in addresses]

    async def close(self) -> None:
        return None


def _resolve_result(host: str, port: int, ip: IPAddress) -> ResolveResult:
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return ResolveResult(
        hostname=host,
        host=str(ip),
        port=port,
        family=family,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


class _SlotUnavailable(Exception):
    pass


@dataclass
class _EndpointSlots:
    semaphore: asyncio.Semaphore
    users: int = 0


class _Limiter:
    """Per-endpoint and overall concurrency.

    An endpoint's entry lives only while someone holds or awaits one of its slots, so the
    table never grows past the attempts in progress, however many endpoints there are.
    The endpoint slot is taken first: attempts queued behind a slow endpoint wait
    without holding any of the overall slots the other endpoints need.
    """

    def __init__(self, *, per_endpoint: int, total: int) -> None:
        if per_endpoint < 1 or total < 1:
            raise ValueError("concurrency limits must be at least 1")
        self._per_endpoint = per_endpoint
        self._overall = asyncio.Semaphore(total)
        self._endpoints: dict[str, _EndpointSlots] = {}

    @contextlib.asynccontextmanager
    async def slot(self, endpoint: str, *, wait: float) -> AsyncIterator[None]:
        slots = self._endpoints.get(endpoint)
        if slots is None:
            slots = self._endpoints[endpoint] = _EndpointSlots(
                asyncio.Semaphore(self._per_endpoint)
            )
        slots.users += 1
        try:
            await self._acquire(slots.semaphore, wait=wait)
            try:
                yield
            finally:
                self._overall.release()
                slots.semaphore.release()
        finally:
            slots.users -= 1
            if slots.users == 0:
                del self._endpoints[endpoint]

    async def _acquire(self, endpoint: asyncio.Semaphore, *, wait: float) -> None:
        """Takes the endpoint's slot, then an overall one, within `wait` seconds."""
        if not endpoint.locked() and not self._overall.locked():
            # The common case needs no timer: both are free and taken without waiting.
            await endpoint.acquire()
            await self._overall.acquire()
            return
        try:
            async with asyncio.timeout(wait):
                await endpoint.acquire()
                try:
                    await self._overall.acquire()
                except BaseException:
                    endpoint.release()
                    raise
        except TimeoutError:
            raise _SlotUnavailable from None


def _endpoint_of(url: yarl.URL) -> str:
    return f"{url.scheme}://{url.host}:{url.port}"


def endpoint_of(url: str) -> str:
    """The endpoint (scheme://host:port) whose slots a delivery to `url` takes; a URL
    that cannot be parsed is an endpoint of its own (its attempt fails at once)."""
    try:
        return _endpoint_of(yarl.URL(url))
    except ValueError:
        return url


def _parse_url(url: str) -> yarl.URL:
    """The URL to post to; ValueError for anything that is not absolute http(s)."""
    parsed = yarl.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("expected an absolute http:// or https:// URL")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError("credentials in the URL are not sent")
    return parsed


async def _read_bounded(content: aiohttp.StreamReader, *, limit: int) -> bytes:
    """At most `limit` bytes of the body; the rest is never read."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = await content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException, *, total: float) -> str:
    """An error text with a stable prefix; aiohttp's own messages carry the detail."""
    if isinstance(exc, TargetRefused):
        return f"target refused: {exc}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS error: {exc}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, TimeoutError):
        # Our own deadline raises a bare TimeoutError; aiohttp's say which phase ran out.
        return f"timeout: {exc}" if str(exc) else f"timeout: no response within {total}s"
    return f"connection error: {type(exc).__name__}: {exc}".rstrip(": ")


def _redirect_error(response: aiohttp.ClientResponse) -> str | None:
    if not 300 <= response.status <= 399:
        return None
    location = response.headers.get("Location", "")[:_MAX_LOCATION_CHARS]
    return f"redirect not followed: {response.status} to {location or '(no Location)'}"


class HttpSender:
    """Posts webhook bodies; one instance per process, shared by all workers.

    Construct and use it inside one running event loop; call `aclose()` when done.
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
        ssl_context: ssl.SSLContext | None = None,
        limit_slots: bool = True,
    ) -> None:
        """`limit_slots=False` leaves the endpoint slots to a caller that never exceeds
        `per_host_limit` and `total_limit` itself (the delivery worker); aiohttp's
        connector still holds to both."""
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes cannot be negative")
        self._policy = policy
        self._timeouts = timeouts or Timeouts()
        self._max_response_bytes = max_response_bytes
        self._limiter = (
            _Limiter(per_endpoint=per_host_limit, total=total_limit) if limit_slots else None
        )
        self._targets: dict[str, yarl.URL | str] = {}
        self._session = _new_session(
            resolver=CheckedResolver(policy=policy, resolver=resolver),
            timeouts=self._timeouts,
            per_host_limit=per_host_limit,
            total_limit=total_limit,
            user_agent=user_agent,
            ssl_context=ssl_context,
        )

    async def __aenter__(self) -> HttpSender:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._session.close()

    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        """POSTs `body` to `url` once. Failures are results, not exceptions."""
        checked = self._targets.get(url)
        if checked is None:
            checked = self._check_target(url)
        if isinstance(checked, str):
            return AttemptResult.failed(checked)
        target = checked
        if self._limiter is None:
            return await self._post(target, body=body, headers=headers)
        wait = self._timeouts.slot_wait or self._timeouts.total
        try:
            async with self._limiter.slot(_endpoint_of(target), wait=wait):
                return await self._post(target, body=body, headers=headers)
        except _SlotUnavailable:
            endpoint = _endpoint_of(target)
            return AttemptResult.failed(f"endpoint busy: no free slot for {endpoint} in {wait}s")

    def _check_target(self, url: str) -> yarl.URL | str:
        """The URL to post to, or why it is refused; remembered per URL (the policy and
        an IP literal never change, names are checked again at every connection)."""
        target: yarl.URL | str
        try:
            target = parsed = _parse_url(url)
            # aiohttp never consults the resolver for an IP literal, so CheckedResolver
            # alone would let http://127.0.0.1/ through.
            check_host_literal(parsed.raw_host or "", self._policy)
        except ValueError as exc:
            target = f"invalid URL: {exc}"
        except TargetRefused as exc:
            target = _describe(exc, total=self._timeouts.total)
        if len(self._targets) >= _MAX_REMEMBERED_TARGETS:
            self._targets.clear()
        self._targets[url] = target
        return target

    async def _post(
        self, url: yarl.URL, *, body: bytes, headers: Mapping[str, str]
    ) -> AttemptResult:
        started = time.perf_counter()
        response: aiohttp.ClientResponse | None = None
        snippet, error = b"", None
        try:
            # One deadline for the whole exchange: handshake, request, headers and the
            # bounded part of the body.
            async with asyncio.timeout(self._timeouts.total):
                response = await self._session.post(
                    url, data=body, headers=headers, allow_redirects=False
                )
                async with response:
                    snippet = await _read_bounded(response.content, limit=self._max_response_bytes)
        except (aiohttp.ClientError, TargetRefused, OSError) as exc:
            error = _describe(exc, total=self._timeouts.total)
        latency = time.perf_counter() - started
        if response is None:
            return AttemptResult.failed(error or "no response", latency=latency)
        if error is not None:
            # The status already arrived, so the attempt keeps it; the error says the
            # body was cut short.
            error = f"reading the response: {error}"
        return AttemptResult(
            status_code=response.status,
            latency=latency,
            error=error or _redirect_error(response),
            response_snippet=snippet.decode("utf-8", errors="replace"),
            retry_after=_retry_after(response),
        )


def _retry_after(response: aiohttp.ClientResponse) -> str | None:
    value = response.headers.get("Retry-After")
    return None if value is None else value[:_MAX_RETRY_AFTER_CHARS]


def _new_session(
    *,
    resolver: CheckedResolver,
    timeouts: Timeouts,
    per_host_limit: int,
    total_limit: int,
    user_agent: str,
    ssl_context: ssl.SSLContext | None,
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=resolver,
        # Our own slots admit no more than this; the connector is a second fence.
        limit=total_limit,
        limit_per_host=per_host_limit,
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Cookies from one tenant's receiver must never reach another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        # A proxy from the environment would resolve names itself, past the SSRF check.
        trust_env=False,
        # A compressed snippet could expand without bound; ask for and keep raw bytes.
        auto_decompress=False,
        headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect),
    )
