"""The delivery worker on a real store, with fake routes and a fake sender."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.delivery_signer import Signer
from dispatcher_service.domain import (
    Attempt,
    ClaimedBatch,
    ClaimedDelivery,
    Completion,
    DeliveryQuery,
    DeliveryState,
    HandOff,
    PreparedEvent,
    Target,
)
from dispatcher_service.ingest import _GroupCommit
from dispatcher_service.keyring import KeyRing
from dispatcher_service.retry import RetrySchedule
from dispatcher_service.routing import Route
from dispatcher_service.signing import Signature, SignatureAlgorithm
from dispatcher_service.store import DeliveryStore
from dispatcher_service.worker import DeliveryWorker, Sender, WorkerLimits
from service_common.errors import StoreUnavailable
from tests.integration.conftest import eventually
from webhook_receiver import verify_signature


@dataclass(frozen=True)
class Sent:
    status_code: int | None = 200
    latency: float = 0.001
    error: str | None = None
    response_snippet: str = "ok"
    retry_after: str | None = None


class FakeSender:
    def __init__(self) -> None:
        self.urls: list[str] = []

    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> Sent:
        self.urls.append(url)
        return Sent()


class LateRoutes:
    """A routing table that is not loaded until the test says so."""

    def __init__(self) -> None:
        self.ready = False

    def is_ready(self) -> bool:
        return self.ready

    def route(self, subscription_id: str) -> Route | None:
        if not self.ready:
            return None
        return Route(
            subscription_id=subscription_id,
            tenant="acme",
            url="http://127.0.0.1:9/in",
            signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
            secret=None,
            enabled=True,
        )


async def never_disable(subscription_id: str, reason: str) -> None:
    raise AssertionError("nothing should be disabled")


QUICK = WorkerLimits(poll_interval=0.01, flush_interval=0.0)


def new_worker(
    store: DeliveryStore,
    routes: LateRoutes,
    sender: Sender,
    signer: Signer,
    *,
    schedule: str = "0s",
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    limits: WorkerLimits = QUICK,
) -> DeliveryWorker:
    return DeliveryWorker(
        store=store,
        routes=routes,
        sender=sender,
        signer=signer,
        disable=never_disable,
        schedule=RetrySchedule.parse(schedule),
        disable_policy=None,
        limits=limits,
        user_agent="test",
        clock=clock,
        rng=lambda: 0.5,
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'dispatcher.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


ENDPOINT = Target("s1", "http://127.0.0.1:9/in")


def ingest(store: DeliveryStore, targets: dict[str, tuple[Target, ...]], *, now: datetime) -> None:
    """Stores one claim event per message id, with a delivery to each of its targets."""
    store.ingest(
        [
            PreparedEvent(
                tenant="acme",
                message_id=message_id,
                message_type="event.claim.created.v1",
                payload=json.dumps({"messageId": message_id}),
                targets=to,
            )
            for message_id, to in targets.items()
        ],
        now=now,
    )


async def test_the_worker_waits_for_routes_instead_of_killing_early_deliveries(
    engine: Engine, tmp_path: Path
) -> None:
    store = DeliveryStore(engine)
    ingest(store, {"m1": (ENDPOINT,)}, now=datetime.now(UTC))
    routes, sender = LateRoutes(), FakeSender()

    worker = new_worker(store, routes, sender, KeyRing.open(tmp_path / "keys"))
    worker.start()
    try:
        await asyncio.sleep(0.2)  # many claim cycles while routes are missing
        (waiting,) = store.page(DeliveryQuery(tenant="acme", page_size=5), after=None)[0]
        assert waiting.state is DeliveryState.PENDING
        assert sender.urls == []
        routes.ready = True
        for _ in range(200):
            (delivery,) = store.page(DeliveryQuery(tenant="acme", page_size=5), after=None)[0]
            if delivery.state is DeliveryState.SUCCEEDED:
                break
            await asyncio.sleep(0.02)
        assert delivery.state is DeliveryState.SUCCEEDED
        assert sender.urls == ["http://127.0.0.1:9/in"]
    finally:
        await worker.stop(1)


class RecordingSender:
    def __init__(self, *, failing: set[str]) -> None:
        self.failing = failing
        self.bodies: list[dict[str, str]] = []

    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> Sent:
        self.bodies.append(json.loads(body))
        if headers["webhook-id"] in self.failing:
            self.failing.discard(headers["webhook-id"])
            return Sent(status_code=500)
        return Sent()


class CountingSigner:
    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys
        self.signed: list[str] = []

    def sign(self, payload_as_string: str, algorithm: SignatureAlgorithm) -> Signature:
        self.signed.append(json.loads(payload_as_string)["messageId"])
        return self.keys.sign(payload_as_string, algorithm)


async def test_an_event_is_signed_once_for_all_its_subscriptions_but_again_when_retried_later(
    engine: Engine, tmp_path: Path
) -> None:
    store = DeliveryStore(engine)
    now = datetime.now(UTC)
    targets = tuple(Target(f"s{i}", "http://127.0.0.1:9/in") for i in range(3))
    ingest(store, {"fan-out": targets, "retried": targets[:1]}, now=now)
    routes, sender = LateRoutes(), RecordingSender(failing={"retried"})
    routes.ready = True
    keys = KeyRing.open(tmp_path / "keys")
    signer = CountingSigner(keys)
    clock = [now]

    worker = new_worker(
        store,
        routes,
        sender,
        signer,
        # The retry is due 2 minutes after the failure, past the time a signature is reused.
        schedule="0s,120s",
        clock=lambda: clock[0],
    )
    worker.start()
    try:
        for _ in range(200):
            if len(sender.bodies) == 4:
                break
            await asyncio.sleep(0.02)
        assert sorted(signer.signed) == ["fan-out", "retried"]
        clock[0] += timedelta(minutes=3)
        for _ in range(200):
            if len(sender.bodies) == 5:
                break
            await asyncio.sleep(0.02)
    finally:
        await worker.stop(1)

    assert sorted(signer.signed) == ["fan-out", "retried", "retried"]
    fan_out = [
        body
        for body in sender.bodies
        if json.loads(body["payloadAsString"])["messageId"] == "fan-out"
    ]
    assert len(fan_out) == 3
    assert len({body["signature"] for body in fan_out}) == 1
    key = keys.public_key(keys.active_key_id(SignatureAlgorithm.ECDSA_P256_SHA256))
    assert key is not None
    for body in sender.bodies:
        verify_signature(body["payloadAsString"], body["signature"], key.public_key_pem)


async def test_what_a_dead_worker_held_is_sent_again_unless_its_last_attempt_was_cut_short(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DeliveryStore(engine)
    start = datetime.now(UTC) - timedelta(hours=1)
    ingest(store, {"first-try": (ENDPOINT,), "last-try": (ENDPOINT,)}, now=start)
    lease = timedelta(minutes=1)
    # A worker that died: it held both, "last-try" after its first attempt had failed.
    held = store.claim(owner="dead", limit=2, now=start, lease=lease, max_attempts=2)
    first, last = sorted(held.deliveries, key=lambda d: d.message_id)
    failed = Attempt(
        number=1, start_time=start, status_code=503, latency_ms=1, error="", response_snippet=""
    )
    store.complete(
        [
            Completion(
                delivery_id=last.id,
                tenant="acme",
                subscription_id="s1",
                attempt=failed,
                state=DeliveryState.RETRYING,
                next_attempt_time=start,
                endpoint_failed=True,
            )
        ],
        owner="dead",
        now=start,
    )
    assert (
        len(store.claim(owner="dead", limit=2, now=start, lease=lease, max_attempts=2).deliveries)
        == 1
    )
    routes, sender = LateRoutes(), RecordingSender(failing=set())
    routes.ready = True

    worker = new_worker(store, routes, sender, KeyRing.open(tmp_path / "keys"), schedule="0s,1s")
    worker.start()
    try:
        for _ in range(200):
            delivered = store.get(first.id, tenant=None)
            if delivered.state is DeliveryState.SUCCEEDED:
                break
            await asyncio.sleep(0.02)
    finally:
        await worker.stop(1)
    assert [(a.number, a.interrupted, a.status_code) for a in delivered.attempts] == [
        (1, True, 0),
        (2, False, 200),
    ]
    # Its second attempt was its last: it is not sent again.
    given_up = store.get(last.id, tenant=None)
    assert given_up.state is DeliveryState.DEAD
    assert [(a.number, a.interrupted) for a in given_up.attempts] == [(1, False), (2, True)]
    assert [json.loads(body["payloadAsString"])["messageId"] for body in sender.bodies] == [
        "first-try"
    ]
    assert any(
        record.levelname == "WARNING" and "interrupted" in record.getMessage()
        for record in caplog.records
    )


class ClaimCountingStore(DeliveryStore):
    """Remembers the message ids of what claims took."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.claimed: list[str] = []

    def claim(self, **kwargs: Any) -> ClaimedBatch:
        batch = super().claim(**kwargs)
        self.claimed += [delivery.message_id for delivery in batch.deliveries]
        return batch


def prepared(message_id: str, *targets: Target) -> PreparedEvent:
    return PreparedEvent(
        tenant="acme",
        message_id=message_id,
        message_type="event.claim.created.v1",
        payload=json.dumps({"messageId": message_id}),
        targets=targets,
    )


# Room for 3 in flight, 1 of them kept for claims; 2 at once per endpoint.
SMALL = WorkerLimits(
    max_in_flight=3, claim_batch=2, per_endpoint=2, poll_interval=60, flush_interval=0.0
)


def small_worker(
    store: DeliveryStore, tmp_path: Path, sender: FakeSender | None = None
) -> DeliveryWorker:
    """A worker with `SMALL` limits whose routing table is loaded already."""
    routes = LateRoutes()
    routes.ready = True
    keys = KeyRing.open(tmp_path / "keys")
    return new_worker(store, routes, sender or FakeSender(), keys, limits=SMALL)


async def test_a_worker_takes_from_ingestion_what_starts_at_once_and_keeps_room_for_claims(
    engine: Engine, tmp_path: Path
) -> None:
    routes = LateRoutes()
    worker = new_worker(
        DeliveryStore(engine), routes, FakeSender(), KeyRing.open(tmp_path / "keys"), limits=SMALL
    )
    other = Target("s3", "http://127.0.0.1:10/in")  # another endpoint
    targets = [ENDPOINT, ENDPOINT, Target("s2", ENDPOINT.url), ENDPOINT, other]
    assert worker.offer(targets) is None  # not started
    worker.start()
    try:
        assert worker.offer(targets) is None  # no routing table yet
        routes.ready = True
        offer = worker.offer(targets)
        assert offer is not None
        # 2 of room (1 of the 3 is kept for claims), at most 2 for one endpoint.
        assert offer.counts == {"s1": 2}
        assert offer.owner == worker.owner
        assert worker.offer([other]) is None  # the room is held
        worker.withdraw(offer)
        again = worker.offer([other, ENDPOINT, ENDPOINT])
        assert again is not None
        assert again.counts == {"s3": 1, "s1": 1}
        worker.withdraw(again)
    finally:
        await worker.stop(1)
    assert worker.offer(targets) is None  # stopped


async def test_ingestion_hands_new_deliveries_to_its_worker_and_wakes_it_for_the_rest(
    engine: Engine, tmp_path: Path
) -> None:
    store, sender = ClaimCountingStore(engine), FakeSender()
    worker = small_worker(store, tmp_path, sender)
    writer = _GroupCommit(store, worker=worker)
    worker.start()
    try:
        await asyncio.sleep(0.1)  # its first claim, of nothing, is over
        # The endpoint takes 2 at once: the third is left to a claim.
        same_endpoint = Target("s2", ENDPOINT.url)
        outcomes = await writer.ingest(
            [
                prepared("handed-1", ENDPOINT),
                prepared("handed-2", same_endpoint),
                prepared("claimed", ENDPOINT),
            ],
            now=datetime.now(UTC),
        )
        assert [o.duplicate for o in outcomes] == [False] * 3

        def delivered() -> bool:
            page, _ = store.page(DeliveryQuery(tenant="acme", page_size=5), after=None)
            return len(page) == 3 and all(d.state is DeliveryState.SUCCEEDED for d in page)

        # Long before the next poll (60 s): the second was claimed when ingestion woke it.
        await eventually(delivered, within=5)
    finally:
        await worker.stop(1)
    assert store.claimed == ["claimed"]
    assert sender.urls == [ENDPOINT.url] * 3


class UnavailableStore(DeliveryStore):
    def ingest(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the database is unavailable")


async def test_the_room_offered_to_an_ingestion_that_fails_is_free_again(
    engine: Engine, tmp_path: Path
) -> None:
    store = UnavailableStore(engine)
    worker = small_worker(store, tmp_path)
    worker.start()
    try:
        with pytest.raises(StoreUnavailable):
            await _GroupCommit(store, worker=worker).ingest(
                [prepared("lost", ENDPOINT)], now=datetime.now(UTC)
            )
        offer = worker.offer([ENDPOINT, ENDPOINT])
        assert offer is not None
        assert offer.counts == {"s1": 2}
    finally:
        await worker.stop(1)


async def test_what_is_handed_to_a_stopping_worker_is_given_back_unsent(
    engine: Engine, tmp_path: Path
) -> None:
    store, sender = DeliveryStore(engine), FakeSender()
    worker = small_worker(store, tmp_path, sender)
    worker.start()
    offer = worker.offer([ENDPOINT])
    assert offer is not None
    await worker.stop(1)
    stored = store.ingest([prepared("late", ENDPOINT)], now=datetime.now(UTC), hand_off=offer)
    await worker.accept(offer, stored.handed_off)
    assert sender.urls == []
    # Due again at once for any worker, with no attempt charged.
    claimed = store.claim(
        owner="other", limit=5, now=datetime.now(UTC), lease=timedelta(minutes=1), max_attempts=1
    )
    assert [(d.message_id, d.attempt_count) for d in claimed.deliveries] == [("late", 0)]
    assert claimed.interrupted == []


class BrokenWorker:
    """Takes every delivery offered, then fails to start them."""

    def offer(self, targets: Sequence[Target]) -> HandOff | None:
        counts: dict[str, int] = {}
        for target in targets:
            counts[target.subscription_id] = counts.get(target.subscription_id, 0) + 1
        return HandOff(
            owner="broken", lease_expires=datetime.now(UTC) + timedelta(minutes=1), counts=counts
        )

    async def accept(self, offer: HandOff, deliveries: list[ClaimedDelivery]) -> None:
        raise RuntimeError("a bug")

    def withdraw(self, offer: HandOff) -> None:
        raise AssertionError("the events were stored")

    def wake(self, subscription_ids: Collection[str] = ()) -> None:
        raise AssertionError("nothing was left for claims")


async def test_events_stored_are_acknowledged_even_when_handing_them_over_fails(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    store = DeliveryStore(engine)
    outcomes = await _GroupCommit(store, worker=BrokenWorker()).ingest(
        [prepared("kept", ENDPOINT)], now=datetime.now(UTC)
    )
    assert [(o.message_id, o.duplicate) for o in outcomes] == [("kept", False)]
    assert "handing 1 deliveries over failed" in caplog.text
    # Leased to the worker that failed: sent by whoever claims it once the lease runs out.
    later = datetime.now(UTC) + timedelta(minutes=2)
    claimed = store.claim(
        owner="other", limit=5, now=later, lease=timedelta(minutes=1), max_attempts=3
    )
    assert [d.message_id for d in claimed.deliveries] == ["kept"]
