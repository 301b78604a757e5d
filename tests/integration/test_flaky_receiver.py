"""The dispatcher against a flaky receiver: failures, hangs and 429s, and nothing is lost.

A real aiohttp receiver on 127.0.0.1 decides each request's fate with a random generator
seeded from (seed, path, messageId, request number), so the fate of every request is the
same whatever order the requests arrive in: 30% answer 500, 10% hang past the attempt
timeout, 10% answer 429 with `Retry-After: 1`, the rest 204. After `MAX_FAILURES` failed
requests for one delivery it answers 204, so no delivery can run out of attempts and the
outcome is fixed; with these shares a delivery fails that often once in 256.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from dispatcher_service.domain import DeliveryState
from dispatcher_service.server import RunningDispatcher
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.store import DeliveryStore
from tests.conftest import Tokens
from tests.integration.conftest import auth, publish, routed
from webhook_receiver import verify_webhook
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

CLAIM_CREATED = "event.claim.created.v1"
SEED = 20261128
EVENTS = 150
PATHS = ("/flaky-a", "/flaky-b", "/flaky-c")
# Failed requests one delivery may see before the receiver relents; below the attempts.
MAX_FAILURES = 8
ATTEMPTS = 12
ATTEMPT_TIMEOUT = 1.0
# How long the whole run may take to deliver everything, after publishing.
DELIVERED_WITHIN = 30.0


class Fate(enum.Enum):
    FAIL = 500
    HANG = 0  # no answer: the dispatcher records a timeout, status 0
    THROTTLE = 429
    OK = 204


def fate(path: str, message_id: str, number: int) -> Fate:
    """What the receiver does with the `number`-th request (from 1) of one delivery."""
    if number > MAX_FAILURES:
        return Fate.OK
    draw = random.Random(f"{SEED}/{path}/{message_id}/{number}").random()  # noqa: S311
    if draw < 0.30:
        return Fate.FAIL
    if draw < 0.40:
        return Fate.HANG
    if draw < 0.50:
        return Fate.THROTTLE
    return Fate.OK


@dataclass(frozen=True)
class Seen:
    path: str
    message_id: str
    number: int
    fate: Fate
    at: float
    headers: Mapping[str, str]
    body: bytes


@dataclass
class FlakyReceiver:
    requests: list[Seen] = field(default_factory=list)
    port: int = 0
    _counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def by_delivery(self) -> dict[tuple[str, str], list[Seen]]:
        seen: dict[tuple[str, str], list[Seen]] = defaultdict(list)
        for request in self.requests:
            seen[request.path, request.message_id].append(request)
        return {key: sorted(value, key=lambda s: s.number) for key, value in seen.items()}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        # The dispatcher may open 256 connections at once; with aiohttp's default backlog
        # (128) the kernel drops the rest and the client's retransmit (1 s) outlasts the
        # attempt timeout: timeouts the receiver never saw.
        await web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        message_id = request.headers.get("webhook-id", "")
        key = (request.path, message_id)
        self._counts[key] += 1
        number = self._counts[key]
        answer = fate(request.path, message_id, number)
        self.requests.append(
            Seen(
                request.path,
                message_id,
                number,
                answer,
                time.monotonic(),
                dict(request.headers),
                body,
            )
        )
        if answer is Fate.HANG:
            # Never answers while the test runs (bounded all the same).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), 30)
            return web.Response(status=204)
        if answer is Fate.THROTTLE:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        if answer is Fate.FAIL:
            return web.Response(status=500, text="flaky failure")
        return web.Response(status=204)


@pytest.fixture
async def flaky() -> AsyncIterator[FlakyReceiver]:
    running = FlakyReceiver()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(params=["curl", "aiohttp"])
def dispatcher_settings(
    dispatcher_settings: DispatcherSettings, request: pytest.FixtureRequest
) -> DispatcherSettings:
    """Each HTTP client the dispatcher can deliver through, as it is configured."""
    return dispatcher_settings.model_copy(
        update={
            "http_client": request.param,
            # Twelve attempts, 0.2 s apart (jittered): more than MAX_FAILURES + 1.
            "retry_schedule": ",".join(["0s"] + ["0.2s"] * (ATTEMPTS - 1)),
            "attempt_timeout_seconds": ATTEMPT_TIMEOUT,
            "connect_timeout_seconds": ATTEMPT_TIMEOUT,
            # Every delivery may be in flight at once: no attempt waits for an endpoint
            # slot, so the receiver sees each attempt as it is made.
            "max_concurrent_per_endpoint": 256,
            "max_concurrent_deliveries": 256,
        }
    )


def claim_event(message_id: str, amount: int) -> pb.Event:
    details: dict[str, Any] = {
        "messageType": CLAIM_CREATED,
        "claimRef": f"CLAIM-{message_id}",
        "receeveClaimRef": "RCV-1",
        "amount": amount,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
    return pb.Event(message_id=message_id, message_type=CLAIM_CREATED, details=json.dumps(details))


async def wait_all_settled(store: DeliveryStore, total: int) -> dict[DeliveryState, int]:
    deadline = time.monotonic() + DELIVERED_WITHIN
    while True:
        counts = await asyncio.to_thread(store.counts_by_state)
        settled = counts.get(DeliveryState.SUCCEEDED, 0) + counts.get(DeliveryState.DEAD, 0)
        if settled >= total or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


async def all_deliveries(dispatcher_stub: DispatcherStub, token: str) -> list[pb.Delivery]:
    """Every delivery of the tenant, each with its attempts."""
    listed: list[pb.Delivery] = []
    page_token = ""
    for _ in range(10):
        page = await dispatcher_stub.ListDeliveries(
            pb.ListDeliveriesRequest(page_size=1000, page_token=page_token), metadata=auth(token)
        )
        listed.extend(page.deliveries)
        page_token = page.next_page_token
        if not page_token:
            break
    detailed = []
    for delivery in listed:
        got = await dispatcher_stub.GetDelivery(
            pb.GetDeliveryRequest(id=delivery.id), metadata=auth(token)
        )
        detailed.append(got.delivery)
    return detailed


def start_time(attempt: pb.DeliveryAttempt) -> datetime:
    return attempt.start_time.ToDatetime()


async def test_a_flaky_receiver_gets_every_event_and_every_attempt_is_recorded_as_it_saw_it(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    flaky: FlakyReceiver,
    tokens: Tokens,
) -> None:
    for path in PATHS:
        await stub.CreateSubscription(
            sub_pb.CreateSubscriptionRequest(
                subscription=sub_pb.Subscription(url=flaky.url(path), message_types=[CLAIM_CREATED])
            ),
            metadata=auth(tokens.acme),
        )
    await routed(dispatcher, "acme", CLAIM_CREATED, len(PATHS))

    events = [claim_event(f"flaky-{i:03d}", amount=i) for i in range(EVENTS)]
    results = await publish(
        dispatcher_stub, tokens.acme_publisher, *(events[i : i + 50] for i in range(0, EVENTS, 50))
    )
    outcomes = [(r.outcome, r.deliveries) for batch in results for r in batch]
    assert outcomes == [(pb.PublishResult.OUTCOME_ACCEPTED, len(PATHS))] * EVENTS
    total = EVENTS * len(PATHS)

    counts = await wait_all_settled(DeliveryStore(dispatcher.engine), total)
    assert counts == {DeliveryState.SUCCEEDED: total}, f"not all delivered: {counts}"
    # Nothing more arrives once every delivery has succeeded.
    arrived = len(flaky.requests)
    await asyncio.sleep(0.5)
    assert len(flaky.requests) == arrived

    seen = flaky.by_delivery()
    expected_pairs = {(path, event.message_id) for path in PATHS for event in events}
    # Every (event, subscription) pair reached the receiver and got a 2xx at least once.
    assert set(seen) == expected_pairs
    assert all(any(s.fate is Fate.OK for s in requests) for requests in seen.values())
    # The run did exercise every kind of failure.
    fates = {f: sum(s.fate is f for s in flaky.requests) for f in Fate}
    assert all(fates[f] >= 10 for f in Fate), fates

    deliveries = await all_deliveries(dispatcher_stub, tokens.acme_deliveries)
    assert len(deliveries) == total
    assert {d.state for d in deliveries} == {pb.DELIVERY_STATE_SUCCEEDED}

    mismatches: list[str] = []
    throttled_gaps: list[float] = []
    pems: dict[str, str] = {}
    for delivery in deliveries:
        key = (urlsplit(delivery.url).path, delivery.message_id)
        requests = seen[key]
        attempts = list(delivery.attempts)
        recorded = [(a.number, a.status_code) for a in attempts]
        received = [(s.number, s.fate.value) for s in requests]
        if recorded != received or delivery.attempt_count != len(requests):
            errors = [(a.error, a.latency_ms) for a in attempts if a.status_code == 0]
            mismatches.append(
                f"{key}: recorded {recorded}, the receiver saw {received}; errors {errors}"
            )
            continue
        # Exactly one success, the last attempt; hangs are recorded as timeouts.
        assert [s.fate is Fate.OK for s in requests].count(True) == 1, key
        assert requests[-1].fate is Fate.OK, key
        for attempt, request in zip(attempts, requests, strict=True):
            if request.fate is Fate.HANG:
                assert attempt.error.startswith("timeout:"), (key, attempt.error)
                assert attempt.latency_ms >= ATTEMPT_TIMEOUT * 1000 * 0.95, key
            else:
                assert attempt.error == "", (key, attempt.error)
        # Retry-After: 1 was honoured: the next attempt came at least a second later,
        # as the receiver saw it and as the dispatcher recorded it.
        for index, request in enumerate(requests[:-1]):
            if request.fate is Fate.THROTTLE:
                gap = requests[index + 1].at - request.at
                throttled_gaps.append(gap)
                recorded_gap = start_time(attempts[index + 1]) - start_time(attempts[index])
                assert gap >= 0.95, (key, index, gap)
                assert recorded_gap.total_seconds() >= 0.99, (key, index, recorded_gap)
        # The signature of the successful request verifies with the published key.
        success = requests[-1]
        key_id = success.headers["webhook-key-id"]
        if key_id not in pems:
            keys = await dispatcher_stub.ListSigningKeys(
                pb.ListSigningKeysRequest(), metadata=auth(tokens.acme)
            )
            pems.update({k.key_id: k.public_key_pem for k in keys.keys})
        webhook = verify_webhook(success.body, pems[key_id])
        assert webhook.message_id == delivery.message_id
        assert webhook.details["claimRef"] == f"CLAIM-{delivery.message_id}"
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])
    assert len(throttled_gaps) >= 10

    dead = await dispatcher_stub.ListDeliveries(
        pb.ListDeliveriesRequest(state=pb.DELIVERY_STATE_DEAD),
        metadata=auth(tokens.acme_deliveries),
    )
    assert list(dead.deliveries) == []
