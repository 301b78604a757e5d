"""The delivery worker (its claim planner, endpoint slots and recorder) on a `MemoryQueue`,
with fake receivers: what reaches them, what is recorded, and what the worker does when
endpoints are slow or gone and when the store is away."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dispatcher_service.domain import (
    ClaimedBatch,
    Completion,
    DeliveryState,
    EndpointHealth,
    PreparedEvent,
    Target,
)
from dispatcher_service.keyring import KeyRing
from dispatcher_service.memory_queue import MemoryQueue
from dispatcher_service.retry import RetrySchedule
from dispatcher_service.routing import Route
from dispatcher_service.sending import AttemptResult, endpoint_of
from dispatcher_service.signing import SignatureAlgorithm
from dispatcher_service.worker import DeliveryWorker, WorkerLimits
from service_common.errors import StoreUnavailable
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
QUICK = WorkerLimits(poll_interval=0.01, flush_interval=0.0)
# 8 in flight, 2 at once per endpoint (and 2 waiting for a slot).
SMALL = WorkerLimits(
    max_in_flight=8, per_endpoint=2, claim_batch=8, poll_interval=0.01, flush_interval=0.0
)


class Clock:
    """The time as the worker sees it: still until a test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Routes:
    """A loaded routing table of subscriptions and their URLs."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self.table = {
            subscription_id: Route(
                subscription_id=subscription_id,
                tenant="acme",
                url=url,
                signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
                secret=None,
                enabled=True,
            )
            for subscription_id, url in urls.items()
        }
        self.disabled: list[tuple[str, str]] = []

    def is_ready(self) -> bool:
        return True

    def route(self, subscription_id: str) -> Route | None:
        return self.table.get(subscription_id)

    async def disable(self, subscription_id: str, reason: str) -> None:
        """The subscription service's side of a disable."""
        self.disabled.append((subscription_id, reason))
        self.table[subscription_id] = replace(self.table[subscription_id], enabled=False)


class Receivers:
    """Fake receivers: each URL answers the statuses scripted for it, then 200. Requests
    to a held endpoint wait until it is let through; how many run at once is counted."""

    def __init__(self, scripts: Mapping[str, Sequence[int]] | None = None) -> None:
        self.scripts = {url: list(statuses) for url, statuses in (scripts or {}).items()}
        self.sent: list[tuple[str, str]] = []
        self.running: collections.Counter[str] = collections.Counter()
        self.most: collections.Counter[str] = collections.Counter()
        self.on_send: Callable[[], None] = lambda: None
        self._gates: dict[str, asyncio.Event] = {}

    def hold(self, url: str) -> None:
        self._gates[endpoint_of(url)] = asyncio.Event()

    def let_through(self, url: str) -> None:
        self._gates.pop(endpoint_of(url)).set()

    def messages_to(self, url: str) -> list[str]:
        return [message_id for sent_to, message_id in self.sent if sent_to == url]

    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        self.sent.append((url, json.loads(json.loads(body)["payloadAsString"])["id"]))
        self.on_send()
        endpoint = endpoint_of(url)
        self.running[endpoint] += 1
        self.most[endpoint] = max(self.most[endpoint], self.running[endpoint])
        try:
            gate = self._gates.get(endpoint)
            if gate is not None:
                await gate.wait()
        finally:
            self.running[endpoint] -= 1
        script = self.scripts.get(url)
        status = script.pop(0) if script else 200
        return AttemptResult(
            status_code=status, latency=0.001, error=None, response_snippet="", retry_after=None
        )


def new_worker(
    queue: MemoryQueue,
    routes: Routes,
    receivers: Receivers,
    tmp_path: Path,
    *,
    clock: Clock | None = None,
    schedule: str = "0s",
    limits: WorkerLimits = QUICK,
) -> DeliveryWorker:
    return DeliveryWorker(
        store=queue,
        routes=routes,
        sender=receivers,
        signer=KeyRing.open(tmp_path / "keys"),
        disable=routes.disable,
        schedule=RetrySchedule.parse(schedule),
        disable_policy=None,
        limits=limits,
        user_agent="test",
        clock=clock or Clock(),
        rng=lambda: 0.5,  # no jitter
    )


@contextlib.asynccontextmanager
async def running(worker: DeliveryWorker) -> AsyncIterator[DeliveryWorker]:
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop(1)


def ingest(
    queue: MemoryQueue, targets: Mapping[str, Sequence[Target]], *, at: datetime = T0
) -> list[str]:
    """Stores one event per message id, with a delivery to each of its targets; the ids of
    the deliveries, in that order."""
    before = len(queue.delivery_ids())
    queue.ingest([prepared(message_id, *to) for message_id, to in targets.items()], now=at)
    return queue.delivery_ids()[before:]


def prepared(message_id: str, *targets: Target) -> PreparedEvent:
    return PreparedEvent(
        tenant="acme",
        message_id=message_id,
        message_type="event.claim.created.v1",
        payload=json.dumps({"id": message_id}),
        targets=targets,
    )


def states(queue: MemoryQueue) -> collections.Counter[DeliveryState]:
    return collections.Counter(queue.state_of(i) for i in queue.delivery_ids())


def all_in(queue: MemoryQueue, state: DeliveryState, count: int) -> Callable[[], bool]:
    return lambda: states(queue) == {state: count}


A = Target("a", "https://a.example/in")
B = Target("b", "https://b.example/in")


async def test_deliveries_reach_their_receivers_once_and_are_recorded_succeeded(
    tmp_path: Path,
) -> None:
    queue, receivers = MemoryQueue(), Receivers()
    routes = Routes({"a": A.url, "b": B.url})
    ingest(queue, {"m1": [A, B], "m2": [A]})
    async with running(new_worker(queue, routes, receivers, tmp_path)) as worker:
        await until(all_in(queue, DeliveryState.SUCCEEDED, 3))
        (late,) = ingest(queue, {"m3": [B]})
        worker.wake({"b"})
        await until(all_in(queue, DeliveryState.SUCCEEDED, 4))
    assert sorted(receivers.sent) == [(A.url, "m1"), (A.url, "m2"), (B.url, "m1"), (B.url, "m3")]
    attempts = queue.attempts_of(late)
    assert [(a.number, a.status_code, a.start_time) for a in attempts] == [(1, 200, T0)]


async def test_a_delivery_handed_over_at_ingestion_is_sent_by_the_worker_it_is_leased_to(
    tmp_path: Path,
) -> None:
    queue, receivers = MemoryQueue(), Receivers()
    async with running(new_worker(queue, Routes({"a": A.url}), receivers, tmp_path)) as worker:
        offer = worker.offer([A])
        assert offer is not None
        stored = queue.ingest([prepared("m1", A)], now=T0, hand_off=offer)
        assert [d.message_id for d in stored.handed_off] == ["m1"]
        assert stored.due == set()
        await worker.accept(offer, stored.handed_off)
        await until(all_in(queue, DeliveryState.SUCCEEDED, 1))
    assert receivers.sent == [(A.url, "m1")]


async def test_a_failed_attempt_is_tried_again_on_the_schedule_until_it_is_spent(
    tmp_path: Path,
) -> None:
    queue, clock = MemoryQueue(), Clock()
    receivers = Receivers({A.url: [503, 500], B.url: [500, 500, 500]})
    flaky, down = ingest(queue, {"m1": [A], "m2": [B]})
    worker = new_worker(
        queue,
        Routes({"a": A.url, "b": B.url}),
        receivers,
        tmp_path,
        clock=clock,
        schedule="0s,30s,60s",
    )
    async with running(worker):
        await until(lambda: len(queue.attempts_of(flaky)) == len(queue.attempts_of(down)) == 1)
        clock.now = T0 + timedelta(seconds=29)
        await asyncio.sleep(0.1)  # many claims: none finds the retries due
        assert len(receivers.sent) == 2
        clock.now = T0 + timedelta(seconds=30)
        await until(lambda: len(queue.attempts_of(down)) == 2)
        clock.now = T0 + timedelta(seconds=90)
        await until(lambda: len(queue.attempts_of(down)) == 3)
        await until(lambda: queue.state_of(flaky) is DeliveryState.SUCCEEDED)
    assert [(a.number, a.status_code, a.start_time) for a in queue.attempts_of(flaky)] == [
        (1, 503, T0),
        (2, 500, T0 + timedelta(seconds=30)),
        (3, 200, T0 + timedelta(seconds=90)),
    ]
    assert [a.status_code for a in queue.attempts_of(down)] == [500, 500, 500]
    assert queue.state_of(down) is DeliveryState.DEAD
    assert len(receivers.sent) == 6


async def test_an_endpoint_that_answers_410_is_disabled_and_sent_nothing_more(
    tmp_path: Path,
) -> None:
    queue, receivers, routes = MemoryQueue(), Receivers({A.url: [410]}), Routes({"a": A.url})
    (gone,) = ingest(queue, {"m1": [A]})
    async with running(new_worker(queue, routes, receivers, tmp_path)) as worker:
        await until(lambda: queue.state_of(gone) is DeliveryState.DEAD)
        (after,) = ingest(queue, {"m2": [A]})
        worker.wake({"a"})
        await until(lambda: queue.state_of(after) is DeliveryState.DEAD)
    assert routes.disabled == [("a", "the endpoint answered 410 Gone")]
    assert [(a.status_code, a.error) for a in queue.attempts_of(gone)] == [(410, "")]
    assert [(a.status_code, a.error) for a in queue.attempts_of(after)] == [
        (0, "subscription disabled")
    ]
    assert receivers.sent == [(A.url, "m1")]


async def test_no_more_than_per_endpoint_deliveries_run_at_once_to_one_endpoint(
    tmp_path: Path,
) -> None:
    queue, receivers = MemoryQueue(), Receivers()
    # Two subscriptions, one endpoint.
    a2 = Target("a2", "https://a.example/other")
    routes = Routes({"a": A.url, "a2": a2.url})
    ingest(queue, {f"m{i}": [A if i % 2 else a2] for i in range(10)})
    receivers.hold(A.url)
    async with running(new_worker(queue, routes, receivers, tmp_path, limits=SMALL)):
        await until(lambda: receivers.running[endpoint_of(A.url)] == 2)
        await asyncio.sleep(0.1)
        assert receivers.running[endpoint_of(A.url)] == 2
        receivers.let_through(A.url)
        await until(all_in(queue, DeliveryState.SUCCEEDED, 10))
    assert receivers.most[endpoint_of(A.url)] == 2
    assert sorted(message_id for _, message_id in receivers.sent) == sorted(
        f"m{i}" for i in range(10)
    )


async def test_a_busy_endpoint_does_not_hold_up_another(tmp_path: Path) -> None:
    queue, receivers, clock = MemoryQueue(), Receivers(), Clock()
    routes = Routes({"a": A.url, "b": B.url})
    backlog = ingest(queue, {f"slow{i}": [A] for i in range(30)})
    others = ingest(queue, {f"fast{i}": [B] for i in range(3)}, at=T0 + timedelta(seconds=1))
    clock.now = T0 + timedelta(seconds=2)
    receivers.hold(A.url)
    worker = new_worker(queue, routes, receivers, tmp_path, clock=clock, limits=SMALL)
    async with running(worker):
        await until(lambda: all(queue.state_of(i) is DeliveryState.SUCCEEDED for i in others))
        assert receivers.running[endpoint_of(A.url)] == 2
        assert {queue.state_of(i) for i in backlog} == {DeliveryState.PENDING}
        receivers.let_through(A.url)
        await until(all_in(queue, DeliveryState.SUCCEEDED, 33))
    assert receivers.most[endpoint_of(A.url)] == 2
    assert len(receivers.sent) == 33


async def test_a_stopped_worker_gives_back_what_it_held_unanswered(tmp_path: Path) -> None:
    queue, receivers, clock = MemoryQueue(), Receivers(), Clock()
    ingest(queue, {f"m{i}": [A] for i in range(6)})
    receivers.hold(A.url)
    worker = new_worker(queue, Routes({"a": A.url}), receivers, tmp_path, clock=clock, limits=SMALL)
    worker.start()
    await until(lambda: receivers.running[endpoint_of(A.url)] == 2)
    await worker.stop(0.05)
    assert len(receivers.sent) == 2
    # Due again at once for any worker, with no attempt charged: no lease left to wait out.
    batch = queue.claim(
        owner="other", limit=10, now=clock.now, lease=timedelta(minutes=1), max_attempts=3
    )
    assert sorted(d.message_id for d in batch.deliveries) == [f"m{i}" for i in range(6)]
    assert [d.attempt_count for d in batch.deliveries] == [0] * 6
    assert batch.interrupted == []


class OutageQueue(MemoryQueue):
    """A memory queue whose worker calls raise `StoreUnavailable` while it is `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failed: list[tuple[str, float]] = []

    def claim(self, **kwargs: Any) -> ClaimedBatch:
        self._reach("claim")
        return super().claim(**kwargs)

    def complete(
        self, completions: Sequence[Completion], *, owner: str, now: datetime
    ) -> list[EndpointHealth]:
        self._reach("complete")
        return super().complete(completions, owner=owner, now=now)

    def unclaim(self, *, ids: Sequence[str], owner: str) -> None:
        self._reach("unclaim")
        super().unclaim(ids=ids, owner=owner)

    def release(self, *, owner: str) -> None:
        self._reach("release")
        super().release(owner=owner)

    def failures(self, call: str) -> list[float]:
        """When calls of `call` failed (`time.monotonic()`)."""
        return [at for name, at in self.failed if name == call]

    def _reach(self, call: str) -> None:
        if self.down:
            self.failed.append((call, time.monotonic()))
            raise StoreUnavailable("the database is unavailable")


async def test_claims_back_off_while_the_store_is_away_and_deliver_all_once_it_is_back(
    tmp_path: Path,
) -> None:
    queue, receivers = OutageQueue(), Receivers()
    ingest(queue, {f"m{i}": [A] for i in range(5)})
    queue.down = True
    async with running(new_worker(queue, Routes({"a": A.url}), receivers, tmp_path)):
        await until(lambda: len(queue.failures("claim")) >= 5)
        queue.down = False
        await until(all_in(queue, DeliveryState.SUCCEEDED, 5))
    # From the poll interval (0.01 s), twice as long after each failed claim.
    waits = [later - earlier for earlier, later in itertools.pairwise(queue.failures("claim"))]
    assert all(wait >= 0.009 * 2**k for k, wait in enumerate(waits[:3]))
    assert sorted(receivers.sent) == [(A.url, f"m{i}") for i in range(5)]


async def test_answers_are_kept_while_the_store_is_away_and_recorded_once_it_is_back(
    tmp_path: Path,
) -> None:
    queue, receivers = OutageQueue(), Receivers()
    ingest(queue, {f"m{i}": [A] for i in range(3)})

    def store_goes_away() -> None:
        queue.down = True

    receivers.on_send = store_goes_away
    async with running(new_worker(queue, Routes({"a": A.url}), receivers, tmp_path)):
        await until(lambda: len(queue.failures("complete")) >= 2)
        assert states(queue) == {DeliveryState.PENDING: 3}
        receivers.on_send = lambda: None
        queue.down = False
        await until(all_in(queue, DeliveryState.SUCCEEDED, 3))
    assert sorted(receivers.sent) == [(A.url, f"m{i}") for i in range(3)]
