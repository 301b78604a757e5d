"""The platform's public signing keys, fetched from its JWKS and kept while they are fresh.

    >>> keys = KeySet("https://dispatcher.example/.well-known/jwks.json")
    >>> webhook = verify_webhook(body, keys, key_id=headers.get("webhook-key-id"))

The key set is kept for the ``max-age`` of the answer's ``Cache-Control`` (the dispatcher
sends five minutes; ``no-store``/``no-cache`` count as zero; without one,
``default_max_age_seconds``; never more than a day). A key id the kept set does not have
makes it fetch again at once, since a rotated-in key signs from its first moment; but at most
once per ``min_refetch_seconds``, so deliveries naming made-up ids cannot turn the receiver
into a flood of requests to the platform. The same interval spaces out retries after a failed
fetch, and it is also the shortest time a fetched set is kept.

Errors: ``UnknownSigningKey`` (a ``WebhookRejected``: answer 4xx) when the fetched set has no
such key; ``KeySetUnavailable`` (answer 503: the platform retries) when the set could not be
fetched, in which case a set that has expired is not used: keys stop being trusted when
their age says so.

``KeySet`` is for threads, ``AsyncKeySet`` for asyncio; both take an ``httpx`` client (its
transport is the seam for tests) and an injectable monotonic clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Self

import httpx

from webhook_wire.keys import PublicKey, UnsupportedKey, key_id, load_jwk

from .errors import KeySetUnavailable, UnknownSigningKey

__all__ = [
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MIN_REFETCH_SECONDS",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_KEY_SET_BYTES",
    "MAX_MAX_AGE_SECONDS",
    "AsyncKeySet",
    "KeySet",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_MIN_REFETCH_SECONDS = 10.0
DEFAULT_MAX_AGE_SECONDS = 300.0
MAX_MAX_AGE_SECONDS = 86_400.0
MAX_KEY_SET_BYTES = 1024 * 1024
# Key ids are RFC 7638 thumbprints (base64url); anything else is refused before any fetch.
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MAX_AGE = re.compile(r"max-age\s*=\s*\"?(\d+)\"?")

Clock = Callable[[], float]


@dataclass(frozen=True)
class _Fetched:
    keys: Mapping[str, PublicKey]
    expires: float


class _KeyCache:
    """The state both key sets share. Everything but `fresh` runs under the owner's lock."""

    def __init__(
        self, *, url: str, min_refetch_seconds: float, default_max_age_seconds: float, clock: Clock
    ) -> None:
        self.url = url
        self._min_refetch = min_refetch_seconds
        self._default_max_age = default_max_age_seconds
        self._clock = clock
        self._fetched: _Fetched | None = None
        self._last_attempt: float | None = None
        self._last_error: str | None = None

    def fresh(self, kid: str) -> PublicKey | None:
        """The key from a set that has not expired; replaced whole, so safe without a lock."""
        fetched = self._fetched
        if fetched is None or self._clock() >= fetched.expires:
            return None
        return fetched.keys.get(kid)

    def wants_fetch(self, kid: str) -> bool:
        if self.fresh(kid) is not None:
            return False
        last = self._last_attempt
        return last is None or self._clock() - last >= self._min_refetch

    def started(self) -> float:
        self._last_attempt = self._clock()
        return self._last_attempt

    def answered(self, *, started: float, status: int, headers: httpx.Headers, body: bytes) -> None:
        try:
            keys = _parse_key_set(status, body)
        except ValueError as error:
            self.failed(str(error))
            return
        max_age = _max_age(headers.get_list("cache-control"), default=self._default_max_age)
        self._fetched = _Fetched(keys=keys, expires=started + max(max_age, self._min_refetch))
        self._last_error = None

    def failed(self, reason: str) -> None:
        log.warning("cannot fetch the signing keys from %s: %s", self.url, reason)
        self._last_error = reason

    def key(self, kid: str) -> PublicKey:
        if (key := self.fresh(kid)) is not None:
            return key
        if self._last_error is not None:
            raise KeySetUnavailable(
                f"cannot fetch the signing keys from {self.url}: {self._last_error}"
            )
        raise UnknownSigningKey(f"the key set at {self.url} has no key {kid!r}")


class KeySet:
    """The JWKS at ``url``, fetched with httpx when needed; safe to share between threads.

    ``client`` (default: a new ``httpx.Client``, closed by ``close``) carries the requests;
    ``timeout_seconds`` bounds each fetch; ``clock`` is a monotonic clock in seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.Client | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        min_refetch_seconds: float = DEFAULT_MIN_REFETCH_SECONDS,
        default_max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._cache = _KeyCache(
            url=url,
            min_refetch_seconds=min_refetch_seconds,
            default_max_age_seconds=default_max_age_seconds,
            clock=clock,
        )
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client()
        self._timeout = httpx.Timeout(timeout_seconds)
        # Fetches take turns: a burst of deliveries signed by a new key fetches the set once.
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._cache.url

    def get(self, kid: str) -> PublicKey:
        """The public key with id ``kid``: ``UnknownSigningKey`` or ``KeySetUnavailable``."""
        _check_key_id(kid)
        if (key := self._cache.fresh(kid)) is not None:
            return key
        with self._lock:
            if self._cache.wants_fetch(kid):
                self._fetch()
            return self._cache.key(kid)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self) -> None:
        started = self._cache.started()
        try:
            with self._client.stream("GET", self.url, timeout=self._timeout) as response:
                body = _bounded(response.iter_bytes())
        except (httpx.HTTPError, ValueError) as error:
            self._cache.failed(_describe(error))
            return
        self._cache.answered(
            started=started, status=response.status_code, headers=response.headers, body=body
        )


class AsyncKeySet:
    """``KeySet`` for asyncio, on an ``httpx.AsyncClient``; ``await keys.get(kid)``."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        min_refetch_seconds: float = DEFAULT_MIN_REFETCH_SECONDS,
        default_max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._cache = _KeyCache(
            url=url,
            min_refetch_seconds=min_refetch_seconds,
            default_max_age_seconds=default_max_age_seconds,
            clock=clock,
        )
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self._timeout = httpx.Timeout(timeout_seconds)
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        return self._cache.url

    async def get(self, kid: str) -> PublicKey:
        """The public key with id ``kid``: ``UnknownSigningKey`` or ``KeySetUnavailable``."""
        _check_key_id(kid)
        if (key := self._cache.fresh(kid)) is not None:
            return key
        async with self._lock:
            if self._cache.wants_fetch(kid):
                await self._fetch()
            return self._cache.key(kid)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _fetch(self) -> None:
        started = self._cache.started()
        try:
            async with self._client.stream("GET", self.url, timeout=self._timeout) as response:
                chunks = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_KEY_SET_BYTES:
                        raise ValueError(f"the key set is larger than {MAX_KEY_SET_BYTES} bytes")
                    chunks.append(chunk)
        except (httpx.HTTPError, ValueError) as error:
            self._cache.failed(_describe(error))
            return
        self._cache.answered(
            started=started,
            status=response.status_code,
            headers=response.headers,
            body=b"".join(chunks),
        )


def _check_key_id(kid: str) -> None:
    if not _KEY_ID.fullmatch(kid):
        raise UnknownSigningKey("webhook-key-id is no key id")


def _bounded(chunks: Iterable[bytes]) -> bytes:
    received = bytearray()
    for chunk in chunks:
        received += chunk
        if len(received) > MAX_KEY_SET_BYTES:
            raise ValueError(f"the key set is larger than {MAX_KEY_SET_BYTES} bytes")
    return bytes(received)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _max_age(values: Iterable[str], *, default: float) -> float:
    directives = [part.strip().lower() for value in values for part in value.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for directive in directives:
        if match := _MAX_AGE.fullmatch(directive):
            return min(float(match.group(1)), MAX_MAX_AGE_SECONDS)
    return default


def _parse_key_set(status: int, body: bytes) -> dict[str, PublicKey]:
    """The keys of a JWKS answer by id; keys this kit cannot use are left out (and logged)."""
    if status != 200:
        raise ValueError(f"the server answered {status}")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"the answer is not JSON: {error}") from error
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('the answer is not a JWKS: no "keys" list')
    keys: dict[str, PublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        try:
            key = load_jwk(entry)
        except UnsupportedKey as error:
            log.warning("skipping signing key %r: %s", kid, error)
            continue
        # A kid is the key's thumbprint: one that is not names another key, or none.
        if kid != key_id(key):
            log.warning("skipping signing key %r: its kid is not its thumbprint", kid)
            continue
        keys[kid] = key
    return keys
