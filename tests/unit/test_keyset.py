"""`webhook_receiver.KeySet`: the JWKS fetched with httpx, kept for its max-age, fetched again
for an unknown key id at most once per interval, and errors a receiver can answer."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import httpx
import pytest

from webhook_receiver import (
    AsyncKeySet,
    InvalidSignature,
    KeySet,
    KeySetUnavailable,
    PrivateKey,
    UnknownSigningKey,
    WebhookRejected,
    build_webhook,
    generate_ecdsa_key,
    generate_rsa_key,
    key_id,
    public_jwk,
    verify_webhook,
)

URL = "https://dispatcher.test/.well-known/jwks.json"
PAYLOAD = {
    "details": {"messageType": "event.note.created.v1", "noteId": "n-1"},
    "messageId": "m-1",
    "timestamp": "2021-10-14T15:33:16.848Z",
}


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Jwks:
    """A JWKS endpoint: the keys it serves, its Cache-Control, and the requests it got."""

    keys: list[PrivateKey]
    cache_control: str | None = "public, max-age=300"
    status: int = 200
    requests: int = 0
    fail: Exception | None = None
    body: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests += 1
        if self.fail is not None:
            raise self.fail
        headers = {"cache-control": self.cache_control} if self.cache_control else {}
        body = self.body or json.dumps({"keys": [public_jwk(k) for k in self.keys]}).encode()
        return httpx.Response(self.status, headers=headers, content=body)


def key_set(jwks: Jwks, clock: Clock, **options: float) -> KeySet:
    client = httpx.Client(transport=httpx.MockTransport(jwks.handle))
    return KeySet(URL, client=client, clock=clock, min_refetch_seconds=10, **options)


@pytest.fixture(scope="module")
def ecdsa() -> PrivateKey:
    return generate_ecdsa_key()


@pytest.fixture(scope="module")
def rsa() -> PrivateKey:
    return generate_rsa_key()


def test_a_key_set_is_fetched_once_and_kept_for_its_max_age(
    ecdsa: PrivateKey, rsa: PrivateKey
) -> None:
    jwks, clock = Jwks([ecdsa, rsa]), Clock()
    keys = key_set(jwks, clock)

    assert keys.get(key_id(ecdsa)).public_numbers() == ecdsa.public_key().public_numbers()
    assert keys.get(key_id(rsa)).public_numbers() == rsa.public_key().public_numbers()
    clock.now += 299
    keys.get(key_id(ecdsa))
    assert jwks.requests == 1
    clock.now += 1
    keys.get(key_id(ecdsa))
    assert jwks.requests == 2


@pytest.mark.parametrize(
    ("cache_control", "kept_for"),
    [("max-age=60", 60), ("no-store", 10), ("no-cache, max-age=600", 10), (None, 120)],
)
def test_the_max_age_comes_from_cache_control_and_never_under_the_refetch_interval(
    ecdsa: PrivateKey, cache_control: str | None, kept_for: float
) -> None:
    jwks, clock = Jwks([ecdsa], cache_control=cache_control), Clock()
    keys = key_set(jwks, clock, default_max_age_seconds=120)

    keys.get(key_id(ecdsa))
    clock.now += kept_for - 0.5
    keys.get(key_id(ecdsa))
    assert jwks.requests == 1
    clock.now += 0.5
    keys.get(key_id(ecdsa))
    assert jwks.requests == 2


def test_an_unknown_key_id_refetches_at_once_but_at_most_once_per_interval(
    ecdsa: PrivateKey,
) -> None:
    rotated = generate_ecdsa_key()
    jwks, clock = Jwks([ecdsa]), Clock()
    keys = key_set(jwks, clock)
    keys.get(key_id(ecdsa))
    clock.now += 10

    with pytest.raises(UnknownSigningKey):
        keys.get(key_id(rotated))
    assert jwks.requests == 2
    jwks.keys.append(rotated)
    for _ in range(5):  # a burst of made-up or not yet published ids fetches nothing more
        with pytest.raises(UnknownSigningKey):
            keys.get(key_id(rotated))
    assert jwks.requests == 2
    clock.now += 10
    assert keys.get(key_id(rotated)) is not None
    assert jwks.requests == 3
    # The set is fresh again: its keys come from the cache.
    keys.get(key_id(ecdsa))
    assert jwks.requests == 3


def test_a_text_that_is_no_key_id_is_refused_without_a_fetch(ecdsa: PrivateKey) -> None:
    jwks, clock = Jwks([ecdsa]), Clock()
    keys = key_set(jwks, clock)

    with pytest.raises(UnknownSigningKey, match="no key id"):
        keys.get("../../openapi.json")
    assert jwks.requests == 0


@pytest.mark.parametrize(
    "problem",
    ["unreachable", "timeout", "status 503", "not json", "no keys", "too large"],
)
def test_a_failed_fetch_is_key_set_unavailable_and_retried_after_the_interval(
    ecdsa: PrivateKey, problem: str
) -> None:
    jwks, clock = Jwks([ecdsa]), Clock()
    jwks.fail = {
        "unreachable": httpx.ConnectError("refused"),
        "timeout": httpx.ReadTimeout("slow"),
    }.get(problem)
    jwks.status = 503 if problem == "status 503" else 200
    jwks.body = {
        "not json": b"<html>",
        "no keys": b'{"items": []}',
        "too large": b" " * (1024 * 1024 + 1),
    }.get(problem)
    keys = key_set(jwks, clock)

    with pytest.raises(KeySetUnavailable, match=URL):
        keys.get(key_id(ecdsa))
    with pytest.raises(KeySetUnavailable):
        keys.get(key_id(ecdsa))
    assert jwks.requests == 1
    assert not issubclass(KeySetUnavailable, WebhookRejected)  # answered 503, not 400
    jwks.fail, jwks.status, jwks.body = None, 200, None
    clock.now += 10
    assert keys.get(key_id(ecdsa)) is not None


def test_an_expired_set_is_not_trusted_when_the_refetch_fails(ecdsa: PrivateKey) -> None:
    jwks, clock = Jwks([ecdsa], cache_control="max-age=60"), Clock()
    keys = key_set(jwks, clock)
    keys.get(key_id(ecdsa))
    jwks.fail = httpx.ConnectError("refused")
    clock.now += 60

    with pytest.raises(KeySetUnavailable):
        keys.get(key_id(ecdsa))


def test_a_failed_refetch_for_an_unknown_id_keeps_the_fresh_keys(ecdsa: PrivateKey) -> None:
    jwks, clock = Jwks([ecdsa]), Clock()
    keys = key_set(jwks, clock)
    keys.get(key_id(ecdsa))
    jwks.fail = httpx.ConnectError("refused")
    clock.now += 10

    with pytest.raises(KeySetUnavailable):
        keys.get(key_id(generate_ecdsa_key()))
    assert keys.get(key_id(ecdsa)) is not None


def test_a_jwk_whose_kid_is_not_its_thumbprint_is_left_out(ecdsa: PrivateKey) -> None:
    other = generate_ecdsa_key()
    forged = {**public_jwk(other), "kid": key_id(ecdsa)}
    jwks, clock = Jwks([]), Clock()
    jwks.body = json.dumps({"keys": [forged, {"kty": "oct", "k": "c2VjcmV0"}]}).encode()
    keys = key_set(jwks, clock)

    with pytest.raises(UnknownSigningKey):
        keys.get(key_id(ecdsa))


def test_threads_asking_for_a_new_key_at_once_fetch_the_set_once(ecdsa: PrivateKey) -> None:
    jwks, clock = Jwks([ecdsa]), Clock()
    keys = key_set(jwks, clock)
    start = threading.Barrier(8)
    found: list[object] = []

    def ask() -> None:
        start.wait()
        found.append(keys.get(key_id(ecdsa)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(found) == 8
    assert jwks.requests == 1


def test_verify_webhook_takes_a_key_set_with_the_key_id_header(
    ecdsa: PrivateKey, rsa: PrivateKey
) -> None:
    jwks, clock = Jwks([ecdsa, rsa]), Clock()
    keys = key_set(jwks, clock)

    for private_key in (ecdsa, rsa):
        body = json.dumps(build_webhook(PAYLOAD, private_key))
        webhook = verify_webhook(body, keys, key_id=key_id(private_key))
        assert webhook.message_id == "m-1"
    body = json.dumps(build_webhook(PAYLOAD, ecdsa))
    with pytest.raises(InvalidSignature):
        verify_webhook(body, keys, key_id=key_id(rsa))
    with pytest.raises(UnknownSigningKey, match="no webhook-key-id"):
        verify_webhook(body, keys, key_id=None)
    with pytest.raises(TypeError, match="key_id="):
        verify_webhook(body, keys)


def test_verify_webhook_with_one_key_and_a_key_id_refuses_another_keys_id(
    ecdsa: PrivateKey,
) -> None:
    body = json.dumps(build_webhook(PAYLOAD, ecdsa))

    assert verify_webhook(body, ecdsa.public_key(), key_id=key_id(ecdsa)).message_id == "m-1"
    with pytest.raises(UnknownSigningKey, match="another key"):
        verify_webhook(body, ecdsa.public_key(), key_id=key_id(generate_ecdsa_key()))


def test_the_async_key_set_fetches_once_for_concurrent_deliveries(ecdsa: PrivateKey) -> None:
    jwks, clock = Jwks([ecdsa]), Clock()

    async def run() -> list[object]:
        client = httpx.AsyncClient(transport=httpx.MockTransport(jwks.handle))
        async with AsyncKeySet(URL, client=client, clock=clock) as keys, client:
            found = await asyncio.gather(*(keys.get(key_id(ecdsa)) for _ in range(5)))
            clock.now += 10
            with pytest.raises(UnknownSigningKey):
                await keys.get(key_id(generate_ecdsa_key()))
            body = json.dumps(build_webhook(PAYLOAD, ecdsa))
            with pytest.raises(TypeError, match="AsyncKeySet"):
                verify_webhook(body, keys, key_id="x")  # type: ignore[arg-type]
            return list(found)

    assert len(asyncio.run(run())) == 5
    assert jwks.requests == 2  # the set, then one refetch for the unknown id
