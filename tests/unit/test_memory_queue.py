"""The `DeliveryQueue` contract, rule by rule, on `MemoryQueue`, and on `DeliveryStore`
(SQLite) alongside it, so that the two keep the same rules."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.delivery_queue import DeliveryQueue
from dispatcher_service.domain import (
    MAX_ERROR_CHARS,
    MAX_SNIPPET_CHARS,
    Attempt,
    ClaimedBatch,
    ClaimedDelivery,
    Completion,
    DeliveryState,
    HandOff,
    PreparedEvent,
    Target,
)
from dispatcher_service.memory_queue import MemoryQueue
from dispatcher_service.outage import InProcess
from dispatcher_service.recorder import AttemptStore
from dispatcher_service.store import DeliveryStore

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LEASE = timedelta(minutes=1)
S1, S2, S3 = (Target(f"s{i}", f"https://hooks.example/{i}") for i in (1, 2, 3))


@pytest.fixture(params=["memory", "sqlite"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeliveryQueue]:
    if request.param == "memory":
        yield MemoryQueue()
        return
    engine = create_engine(f"sqlite:///{tmp_path / 'dispatcher.db'}")
    migrate(engine)
    yield DeliveryStore(engine)
    engine.dispose()


def event(message_id: str, *targets: Target, tenant: str = "acme") -> PreparedEvent:
    return PreparedEvent(
        tenant=tenant,
        message_id=message_id,
        message_type="event.claim.created.v1",
        payload=json.dumps({"messageId": message_id}),
        targets=targets,
    )


def ingest(queue: DeliveryQueue, *events: PreparedEvent, at: datetime = T0) -> None:
    queue.ingest(events, now=at)


def claim(
    queue: DeliveryQueue,
    owner: str = "a",
    *,
    at: datetime = T0,
    limit: int = 100,
    max_attempts: int = 3,
    excluded: Collection[str] = (),
    due_after: datetime | None = None,
    only: str | None = None,
) -> ClaimedBatch:
    """A claim leasing for `LEASE`."""
    return queue.claim(
        owner=owner,
        limit=limit,
        now=at,
        lease=LEASE,
        max_attempts=max_attempts,
        excluded=excluded,
        due_after=due_after,
        only=only,
    )


def messages(deliveries: list[ClaimedDelivery]) -> list[str]:
    return sorted(delivery.message_id for delivery in deliveries)


def answer(
    delivery: ClaimedDelivery,
    *,
    at: datetime = T0,
    status: int | None = 200,
    retry_at: datetime | None = None,
) -> Completion:
    """The attempt after those `delivery` was claimed with: 2xx succeeds; another status
    is retried at `retry_at`, or dead without it; None: not sent (its subscription is gone),
    which says nothing of the endpoint."""
    ok = status is not None and 200 <= status <= 299
    failed = DeliveryState.RETRYING if retry_at else DeliveryState.DEAD
    return Completion(
        delivery_id=delivery.id,
        tenant=delivery.tenant,
        subscription_id=delivery.subscription_id,
        attempt=Attempt(
            number=delivery.attempt_count + 1,
            start_time=at,
            status_code=status or 0,
            latency_ms=1,
            error="" if status else "subscription deleted",
            response_snippet="",
        ),
        state=DeliveryState.SUCCEEDED if ok else failed,
        next_attempt_time=None if ok else retry_at,
        endpoint_failed=None if status is None else not ok,
    )


def stored(queue: DeliveryQueue, delivery_id: str) -> tuple[DeliveryState, list[Attempt]]:
    """A delivery's state and attempts, as the queue recorded them."""
    if isinstance(queue, MemoryQueue):
        return queue.state_of(delivery_id), queue.attempts_of(delivery_id)
    assert isinstance(queue, DeliveryStore)
    delivery = queue.get(delivery_id, tenant=None)
    return delivery.state, list(delivery.attempts)


def test_a_memory_queue_is_what_ingestion_and_the_worker_call() -> None:
    queue: DeliveryQueue = MemoryQueue()
    recorded: AttemptStore = queue
    called: InProcess = queue
    assert recorded.in_process
    assert called.in_process


def test_an_event_is_stored_once_per_tenant_and_message_id(queue: DeliveryQueue) -> None:
    first = queue.ingest([event("m1", S1, S2), event("m1", S3), event("m2", S1)], now=T0)
    again = queue.ingest([event("m1", S1), event("m1", S1, tenant="other")], now=T0)
    outcomes = [(o.message_id, o.duplicate, o.deliveries) for o in first.outcomes + again.outcomes]
    assert outcomes == [
        ("m1", False, 2),
        ("m1", True, 0),
        ("m2", False, 1),
        ("m1", True, 0),
        ("m1", False, 1),
    ]
    assert first.due == {"s1", "s2"}
    assert first.handed_off == []
    taken = claim(queue).deliveries
    assert sorted((d.tenant, d.message_id, d.subscription_id) for d in taken) == [
        ("acme", "m1", "s1"),
        ("acme", "m1", "s2"),
        ("acme", "m2", "s1"),
        ("other", "m1", "s1"),
    ]
    assert {d.payload for d in taken} == {'{"messageId": "m1"}', '{"messageId": "m2"}'}


def test_a_hand_off_leases_what_it_asks_for_first_come_first(queue: DeliveryQueue) -> None:
    hand_off = HandOff(owner="a", lease_expires=T0 + LEASE, counts={"s1": 1})
    stored_events = queue.ingest([event("m1", S1), event("m2", S1, S2)], now=T0, hand_off=hand_off)
    assert [(d.message_id, d.subscription_id) for d in stored_events.handed_off] == [("m1", "s1")]
    (handed,) = stored_events.handed_off
    assert (handed.attempt_count, handed.due_time, handed.url) == (0, T0, S1.url)
    assert stored_events.due == {"s1", "s2"}
    others = claim(queue, "b").deliveries
    assert sorted((d.message_id, d.subscription_id) for d in others) == [("m2", "s1"), ("m2", "s2")]
    queue.complete([answer(d) for d in others], owner="b", now=T0)
    # Unanswered when its lease ran out: sent again, the hand-off counted as cut short.
    later = claim(queue, "c", at=T0 + LEASE + timedelta(seconds=1))
    assert [(d.id, d.attempt_count) for d in later.interrupted] == [(handed.id, 1)]
    state, attempts = stored(queue, handed.id)
    assert state is DeliveryState.RETRYING
    assert [(a.number, a.interrupted, a.start_time) for a in attempts] == [(1, True, T0)]


def test_a_claim_takes_the_longest_due_first_up_to_its_limit(queue: DeliveryQueue) -> None:
    for second, message_id in enumerate(["m1", "m2", "m3", "m4"]):
        ingest(
            queue, event(message_id, S1 if second % 2 else S2), at=T0 + timedelta(seconds=second)
        )
    now = T0 + timedelta(seconds=10)
    assert messages(claim(queue, "a", at=now, limit=3).deliveries) == ["m1", "m2", "m3"]
    assert messages(claim(queue, "b", at=now, limit=3).deliveries) == ["m4"]
    assert claim(queue, "c", at=now).deliveries == []


def test_a_claim_takes_nothing_before_it_is_due(queue: DeliveryQueue) -> None:
    ingest(queue, event("m1", S1), at=T0 + timedelta(seconds=5))
    assert claim(queue, at=T0 + timedelta(seconds=4)).deliveries == []
    assert messages(claim(queue, at=T0 + timedelta(seconds=5)).deliveries) == ["m1"]


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({"excluded": {"s1"}}, ["m2", "m4"]),
        ({"excluded": {"s1", "s2", "s3"}}, []),
        ({"due_after": T0}, ["m3", "m4"]),
        ({"due_after": T0, "excluded": {"s3"}}, ["m3"]),
        ({"only": "s1"}, ["m1", "m3"]),
        ({"only": "s2"}, ["m2"]),
        ({"only": "s9"}, []),
    ],
)
def test_a_claim_looks_only_where_it_is_told(
    queue: DeliveryQueue, scope: dict[str, Any], expected: list[str]
) -> None:
    ingest(queue, event("m1", S1), event("m2", S2), at=T0)
    ingest(queue, event("m3", S1), at=T0 + timedelta(seconds=1))
    ingest(queue, event("m4", S3), at=T0 + timedelta(seconds=2))
    taken = claim(queue, at=T0 + timedelta(seconds=3), **scope).deliveries
    assert messages(taken) == expected


def test_no_claim_takes_a_delivery_while_its_lease_holds(queue: DeliveryQueue) -> None:
    ingest(queue, event("m1", S1))
    assert messages(claim(queue, "a").deliveries) == ["m1"]
    assert claim(queue, "b").deliveries == []
    assert claim(queue, "b", at=T0 + LEASE).deliveries == []
    assert messages(claim(queue, "b", at=T0 + LEASE + timedelta(microseconds=1)).deliveries) == [
        "m1"
    ]


def test_a_lease_holds_for_a_claim_made_earlier_than_one_that_found_it_run_out(
    queue: DeliveryQueue,
) -> None:
    ingest(queue, event("m1", S1))
    claim(queue, "a")
    assert claim(queue, "b", at=T0 + LEASE * 2, excluded={"s1"}).deliveries == []
    assert claim(queue, "c", at=T0 + LEASE / 2).deliveries == []
    assert messages(claim(queue, "c", at=T0 + LEASE * 2).deliveries) == ["m1"]


def test_a_lease_that_ran_out_is_claimed_with_its_attempt_recorded_as_interrupted(
    queue: DeliveryQueue,
) -> None:
    ingest(queue, event("m1", S1))
    (lost,) = claim(queue, "a").deliveries
    later = T0 + LEASE + timedelta(seconds=1)
    batch = claim(queue, "b", at=later)
    assert [(d.id, d.attempt_count, d.due_time) for d in batch.deliveries] == [(lost.id, 1, T0)]
    assert batch.interrupted == batch.deliveries
    assert batch.dead == []
    state, attempts = stored(queue, lost.id)
    assert state is DeliveryState.RETRYING
    assert [(a.number, a.interrupted, a.status_code, a.start_time) for a in attempts] == [
        (1, True, 0, T0)
    ]
    # The late answer of the worker that lost it is not recorded; the new claim's is.
    assert queue.complete([answer(lost, status=500)], owner="a", now=later) == []
    assert queue.complete([answer(batch.deliveries[0], at=later)], owner="b", now=later) == []
    state, attempts = stored(queue, lost.id)
    assert state is DeliveryState.SUCCEEDED
    assert [(a.number, a.status_code) for a in attempts] == [(1, 0), (2, 200)]


def test_a_lease_that_ran_out_on_the_last_attempt_leaves_the_delivery_dead(
    queue: DeliveryQueue,
) -> None:
    ingest(queue, event("m1", S1))
    (lost,) = claim(queue, "a", max_attempts=1).deliveries
    later = T0 + LEASE + timedelta(seconds=1)
    batch = claim(queue, "b", at=later, max_attempts=1)
    assert batch.deliveries == batch.interrupted == []
    assert [(d.id, d.attempt_count) for d in batch.dead] == [(lost.id, 1)]
    state, attempts = stored(queue, lost.id)
    assert state is DeliveryState.DEAD
    assert [(a.number, a.interrupted) for a in attempts] == [(1, True)]
    assert claim(queue, "c", at=later + LEASE * 2).dead == []


def test_a_worker_that_claimed_its_lost_lease_again_keeps_its_later_answer(
    queue: DeliveryQueue,
) -> None:
    ingest(queue, event("m1", S1))
    (first,) = claim(queue, "a").deliveries
    later = T0 + LEASE + timedelta(seconds=1)
    (second,) = claim(queue, "a", at=later).deliveries
    answers = [answer(first, status=503, retry_at=later), answer(second, at=later)]
    assert queue.complete(answers, owner="a", now=later) == []
    state, attempts = stored(queue, first.id)
    assert state is DeliveryState.SUCCEEDED
    assert [(a.number, a.status_code) for a in attempts] == [(1, 0), (2, 200)]


def test_an_answer_is_recorded_while_no_other_claim_took_its_delivery(queue: DeliveryQueue) -> None:
    ingest(queue, event("m1", S1))
    (delivery,) = claim(queue, "a").deliveries
    late = T0 + LEASE * 3
    queue.complete([answer(delivery, at=late)], owner="a", now=late)
    assert stored(queue, delivery.id)[0] is DeliveryState.SUCCEEDED
    assert claim(queue, "b", at=late).deliveries == []


def test_unclaim_gives_back_only_the_owners_leases_untouched(queue: DeliveryQueue) -> None:
    ingest(queue, event("m1", S1), event("m2", S2))
    one, two = sorted(claim(queue, "a").deliveries, key=lambda d: d.message_id)
    queue.unclaim(ids=[one.id, two.id], owner="b")
    assert claim(queue, "c").deliveries == []
    queue.unclaim(ids=[one.id], owner="a")
    batch = claim(queue, "c")
    assert [(d.id, d.attempt_count, d.due_time) for d in batch.deliveries] == [(one.id, 0, T0)]
    assert batch.interrupted == []
    assert stored(queue, one.id) == (DeliveryState.PENDING, [])


def test_release_gives_back_every_lease_of_its_owner(queue: DeliveryQueue) -> None:
    ingest(queue, event("m1", S1), event("m2", S2))
    ingest(queue, event("m3", S1), at=T0 + timedelta(seconds=1))
    now = T0 + timedelta(seconds=1)
    claim(queue, "a", at=now, limit=2)
    claim(queue, "b", at=now)
    queue.release(owner="a")
    batch = claim(queue, "c", at=now)
    assert messages(batch.deliveries) == ["m1", "m2"]
    assert batch.interrupted == []
    queue.release(owner="nobody")
    assert claim(queue, "c", at=now).deliveries == []


def test_complete_records_each_attempt_and_what_its_delivery_becomes(
    queue: DeliveryQueue,
) -> None:
    ingest(queue, event("ok", S1), event("again", S2), event("gone", S3))
    by_message = {d.message_id: d for d in claim(queue, "a").deliveries}
    retry_at = T0 + timedelta(seconds=10)
    queue.complete(
        [
            answer(by_message["ok"]),
            answer(by_message["again"], status=503, retry_at=retry_at),
            answer(by_message["gone"], status=410),
        ],
        owner="a",
        now=T0,
    )
    assert [stored(queue, by_message[m].id)[0] for m in ("ok", "again", "gone")] == [
        DeliveryState.SUCCEEDED,
        DeliveryState.RETRYING,
        DeliveryState.DEAD,
    ]
    assert [a.status_code for a in stored(queue, by_message["again"].id)[1]] == [503]
    assert claim(queue, "b", at=retry_at - timedelta(seconds=1)).deliveries == []
    # Its lease ended with the answer: due again, without an interrupted attempt.
    batch = claim(queue, "b", at=retry_at)
    assert [(d.message_id, d.attempt_count, d.due_time) for d in batch.deliveries] == [
        ("again", 1, retry_at)
    ]
    assert batch.interrupted == []


def test_an_attempt_is_kept_with_its_error_and_snippet_cut_to_the_logs_lengths(
    queue: DeliveryQueue,
) -> None:
    ingest(queue, event("long", S1))
    (delivery,) = claim(queue, "a").deliveries
    sent = answer(delivery, status=500)
    long = replace(sent.attempt, error="e" * 5000, response_snippet="s" * 5000)
    queue.complete([replace(sent, attempt=long)], owner="a", now=T0)

    (kept,) = stored(queue, delivery.id)[1]
    assert (len(kept.error), len(kept.response_snippet)) == (MAX_ERROR_CHARS, MAX_SNIPPET_CHARS)


def test_an_answer_of_another_owner_is_not_recorded(queue: DeliveryQueue) -> None:
    ingest(queue, event("m1", S1))
    (delivery,) = claim(queue, "a").deliveries
    assert queue.complete([answer(delivery, status=500)], owner="b", now=T0) == []
    assert stored(queue, delivery.id) == (DeliveryState.PENDING, [])


def failing_run(
    queue: DeliveryQueue, *statuses: int | None, at: datetime
) -> list[tuple[int, datetime]]:
    """Answers one new delivery to s1 per status (None: not sent), in one batch and in
    that order; the run of failures of s1's endpoint that `complete` returns, if any."""
    batch = uuid.uuid4().hex
    events = [event(f"{batch}-{i}", S1) for i in range(len(statuses))]
    ingest(queue, *events, at=at)
    taken = sorted(claim(queue, at=at).deliveries, key=lambda d: d.message_id)
    answers = [answer(d, at=at, status=s) for d, s in zip(taken, statuses, strict=True)]
    runs = queue.complete(answers, owner="a", now=at)
    assert {run.subscription_id for run in runs} <= {"s1"}
    return [(run.consecutive_failures, run.first_failure_time) for run in runs]


def test_an_endpoints_run_of_failures_grows_until_a_success_ends_it(queue: DeliveryQueue) -> None:
    t1, t2, t3, t4 = (T0 + timedelta(minutes=m) for m in range(4))
    assert failing_run(queue, 500, 503, at=t1) == [(2, t1)]
    assert failing_run(queue, 500, None, at=t2) == [(3, t1)]
    assert failing_run(queue, None, at=t2) == []
    # A success in the batch starts the run again, from the failures after it.
    assert failing_run(queue, 500, 200, 500, at=t3) == [(1, t3)]
    assert failing_run(queue, 200, at=t4) == []
    assert failing_run(queue, 500, at=t4) == [(1, t4)]


def test_forget_endpoint_ends_its_run_of_failures(queue: DeliveryQueue) -> None:
    t1, t2 = T0, T0 + timedelta(minutes=1)
    assert failing_run(queue, 500, at=t1) == [(1, t1)]
    queue.forget_endpoint(subscription_id="s1")
    queue.forget_endpoint(subscription_id="never-failed")
    assert failing_run(queue, 500, at=t2) == [(1, t2)]


def test_a_memory_queue_claims_in_creation_order_and_reads_back_what_happened() -> None:
    queue = MemoryQueue()
    ingest(queue, *(event(f"m{i}", S1, S2) for i in range(3)))
    batch = claim(queue)
    assert [d.id for d in batch.deliveries] == queue.delivery_ids()
    assert [(d.message_id, d.subscription_id) for d in batch.deliveries[:3]] == [
        ("m0", "s1"),
        ("m0", "s2"),
        ("m1", "s1"),
    ]
    queue.complete([answer(batch.deliveries[0], status=500)], owner="a", now=T0)
    health = queue.health_of("s1")
    assert health is not None
    assert (health.consecutive_failures, health.first_failure_time) == (1, T0)
    assert queue.health_of("s2") is None


def test_a_memory_queue_claims_past_a_large_skipped_backlog_in_little_time() -> None:
    """A dead endpoint's backlog costs a claim that skips it nothing: no claim reads it."""
    queue = MemoryQueue()
    dead, live = Target("dead", "https://dead.example/"), Target("live", "https://live.example/")
    queue.ingest([event(f"d{i}", dead) for i in range(50_000)], now=T0)
    queue.ingest([event(f"l{i}", live) for i in range(10_000)], now=T0 + timedelta(seconds=1))
    now = T0 + timedelta(seconds=2)
    started = time.perf_counter()
    sent = 0
    while batch := claim(queue, at=now, limit=50, excluded={"dead"}).deliveries:
        queue.complete([answer(d, at=now) for d in batch], owner="a", now=now)
        sent += len(batch)
    per_delivery = (time.perf_counter() - started) / sent
    assert sent == 10_000
    assert per_delivery < 0.0002
    assert len(claim(queue, at=now, limit=50_000, only="dead").deliveries) == 50_000
