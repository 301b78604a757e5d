"""Sends one delivery attempt through aiohttp and reports what happened, never raising.

The fallback sender (`DISPATCHER_HTTP_CLIENT=aiohttp`); `curl_sender.CurlSender` is the
default. In `bench/http_post_rate.py` httpx's own pool manages a small fraction of
aiohttp's rate, and the httpx API over aiohttp (`httpx-aiohttp`) about half of it, the
rest going to httpx's request, response and cookie models. Nothing here needs that API.

Every attempt goes through two gates, in order:

    SSRF policy     literal IPs are checked before anything else; names are resolved once
                    by `CheckedResolver`, and aiohttp connects only to the checked addresses
    timeouts        connect, and total (headers plus the bounded part of the body)

The endpoint slots are the delivery worker's: it never starts more than `per_host_limit`
attempts to one endpoint nor `total_limit` in all; aiohttp's connector holds to both as
a second fence. Error texts follow `sending`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Mapping

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

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
    resolve_checked,
    system_resolver,
)

__all__ = ["CheckedResolver", "HttpSender"]


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


def _describe(exc: BaseException, *, timeouts: Timeouts) -> str:
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
        return f"timeout: {exc}" if str(exc) else timeouts.total_exceeded()
    return f"connection error: {type(exc).__name__}: {exc}".rstrip(": ")


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
    ) -> None:
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes cannot be negative")
        self._timeouts = timeouts or Timeouts()
        self._max_response_bytes = max_response_bytes
        self._targets = CheckedTargets(policy)
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
        target = self._targets.check(url)
        if isinstance(target, str):
            return AttemptResult.failed(target)
        return await self._post(target, body=body, headers=headers)

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
            error = _describe(exc, timeouts=self._timeouts)
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
            error=error or redirect_error(response.status, response.headers.get("Location")),
            response_snippet=snippet.decode("utf-8", errors="replace"),
            retry_after=_retry_after(response),
        )


def _retry_after(response: aiohttp.ClientResponse) -> str | None:
    value = response.headers.get("Retry-After")
    return None if value is None else value[:MAX_RETRY_AFTER_CHARS]


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
        # The worker admits no more than this; the connector is a second fence.
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
