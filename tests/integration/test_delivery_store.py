"""The dispatcher's store on SQLite and PostgreSQL: ingestion, claims with leases, attempts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.domain import (
    INTERRUPTED_ERROR,
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
from dispatcher_service.models import DeliveryRow
from dispatcher_service.store import DeliveryStore
from service_common.errors import NotFound

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
LEASE = timedelta(seconds=30)
ATTEMPTS = 3  # the retry schedule's, for deliveries whose lease ran out


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> DeliveryStore:
    return DeliveryStore(engine)


def event(message_id: str, *subscriptions: str, tenant: str = "acme") -> PreparedEvent:
    return PreparedEvent(
        tenant=tenant,
        message_id=message_id,
        message_type="event.claim.created.v1",
        payload=f'{{"details":{{"messageType":"event.claim.created.v1"}},"messageId":"{message_id}"}}',
        targets=tuple(Target(s, f"https://{s}.example.com/in") for s in subscriptions),
    )


def claim_batch(
    store: DeliveryStore, owner: str, *, now: datetime, limit: int = 10, **variants: Any
) -> ClaimedBatch:
    """What `owner` claims at `now`, leased for LEASE."""
    return store.claim(
        owner=owner, limit=limit, now=now, lease=LEASE, max_attempts=ATTEMPTS, **variants
    )


def claim(
    store: DeliveryStore, owner: str, *, now: datetime, limit: int = 10, **variants: Any
) -> list[ClaimedDelivery]:
    """What `owner` claims at `now` to send, leased for LEASE."""
    return claim_batch(store, owner, now=now, limit=limit, **variants).deliveries


def taken(batch: ClaimedBatch) -> list[tuple[str, int, bool]]:
    """(id, attempt_count, whether the claim recorded an attempt cut short) of what
    `batch` has to send."""
    cut_short = {d.id for d in batch.interrupted}
    return [(d.id, d.attempt_count, d.id in cut_short) for d in batch.deliveries]


def attempt(number: int, status: int = 200) -> Attempt:
    return Attempt(
        number=number,
        start_time=NOW,
        status_code=status,
        latency_ms=12,
        error="",
        response_snippet="ok",
    )


def test_ingest_stores_one_delivery_per_target_and_skips_duplicates(store: DeliveryStore) -> None:
    outcomes = store.ingest(
        [event("m1", "s1", "s2"), event("m2"), event("m1", "s1")], now=NOW
    ).outcomes
    assert [(o.message_id, o.duplicate, o.deliveries) for o in outcomes] == [
        ("m1", False, 2),
        ("m2", False, 0),
        ("m1", True, 0),
    ]
    again = store.ingest(
        [event("m1", "s1", "s2"), event("m1", "s3", tenant="globex")], now=NOW
    ).outcomes
    assert [(o.duplicate, o.deliveries) for o in again] == [(True, 0), (False, 1)]
    page, _ = store.page(DeliveryQuery(tenant="acme", page_size=10), after=None)
    assert sorted(d.subscription_id for d in page) == ["s1", "s2"]


def test_ingest_leases_what_a_hand_off_asks_for_and_leaves_the_rest_to_claims(
    store: DeliveryStore,
) -> None:
    offer = HandOff(owner="local", lease_expires=NOW + LEASE, counts={"s1": 1, "s3": 5})
    stored = store.ingest(
        [event("m1", "s1", "s2"), event("m2", "s1"), event("m3", "s3")], now=NOW, hand_off=offer
    )
    assert [(o.duplicate, o.deliveries) for o in stored.outcomes] == [
        (False, 2),
        (False, 1),
        (False, 1),
    ]
    # The first of each subscription's, as many as asked, ready to send.
    assert [
        (d.message_id, d.subscription_id, d.attempt_count, d.due_time, d.payload)
        for d in stored.handed_off
    ] == [
        ("m1", "s1", 0, NOW, event("m1").payload),
        ("m3", "s3", 0, NOW, event("m3").payload),
    ]
    assert stored.due == {"s1", "s2"}
    # Claims find only the others; the owner records its attempts as for a claim.
    assert sorted((d.message_id, d.subscription_id) for d in claim(store, "other", now=NOW)) == [
        ("m1", "s2"),
        ("m2", "s1"),
    ]
    first, lost = stored.handed_off
    store.complete(
        [
            Completion(
                delivery_id=first.id,
                tenant="acme",
                subscription_id="s1",
                attempt=attempt(1),
                state=DeliveryState.SUCCEEDED,
                next_attempt_time=None,
                endpoint_failed=False,
            )
        ],
        owner="local",
        now=NOW,
    )
    assert store.get(first.id, tenant="acme").state is DeliveryState.SUCCEEDED
    # A hand-off whose owner died is taken again once its lease has run out (as are the
    # claims of "other", which never answered), with the attempt cut short timed when
    # the ingestion leased it.
    later = NOW + LEASE + timedelta(seconds=1)
    assert (lost.id, 1, True) in taken(claim_batch(store, "other", now=later))
    (cut_short,) = store.get(lost.id, tenant="acme").attempts
    assert (cut_short.start_time, cut_short.error) == (NOW, INTERRUPTED_ERROR)


def test_a_duplicate_is_never_handed_off(store: DeliveryStore) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    offer = HandOff(owner="local", lease_expires=NOW + LEASE, counts={"s1": 2})
    again = store.ingest([event("m1", "s1"), event("m1", "s1")], now=NOW, hand_off=offer)
    assert [o.duplicate for o in again.outcomes] == [True, True]
    assert (again.handed_off, again.due) == ([], set())


def test_claims_skip_excluded_subscriptions_or_look_after_a_time_or_at_one_subscription(
    store: DeliveryStore,
) -> None:
    store.ingest([event("old-slow", "slow"), event("old-ok", "ok")], now=NOW)
    later = NOW + timedelta(seconds=10)
    store.ingest([event("new-slow", "slow"), event("new-ok", "ok")], now=later)
    at = later + timedelta(seconds=1)

    def claimed(**variants: Any) -> list[str]:
        return [c.message_id for c in claim(store, "w", now=at, **variants)]

    # Due after NOW + 5 s and not the slow subscription: the new delivery of "ok" only.
    assert claimed(excluded={"slow"}, due_after=NOW + timedelta(seconds=5)) == ["new-ok"]
    assert claimed(excluded={"slow"}) == ["old-ok"]
    assert claimed(due_after=NOW + timedelta(seconds=5)) == ["new-slow"]
    assert claimed(only="ok") == []
    assert claimed(only="slow") == ["old-slow"]
    assert claimed() == []


def test_a_claim_says_when_each_delivery_became_due(store: DeliveryStore) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    store.ingest([event("m2", "s1")], now=NOW + timedelta(seconds=3))
    claimed = claim(store, "w", limit=10, now=NOW + timedelta(seconds=5))
    assert [(c.message_id, c.due_time) for c in claimed] == [
        ("m1", NOW),
        ("m2", NOW + timedelta(seconds=3)),
    ]


def test_claims_lease_each_due_delivery_to_one_owner(store: DeliveryStore) -> None:
    store.ingest([event(f"m{i}", "s1") for i in range(10)], now=NOW)
    first = claim(store, "a", limit=6, now=NOW)
    second = claim(store, "b", limit=6, now=NOW)
    assert len(first) == 6
    assert len(second) == 4
    assert not {d.id for d in first} & {d.id for d in second}
    assert claim(store, "c", limit=6, now=NOW) == []
    assert first[0].payload.startswith('{"details"')


def test_concurrent_claimers_never_share_a_delivery(store: DeliveryStore) -> None:
    store.ingest([event(f"m{i}", "s1", "s2") for i in range(100)], now=NOW)
    claimed: dict[str, list[str]] = {}

    def claimer(owner: str) -> None:
        mine = claimed.setdefault(owner, [])
        while batch := claim(store, owner, limit=7, now=NOW):
            mine.extend(d.id for d in batch)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = [i for ids in claimed.values() for i in ids]
    assert len(everything) == 200
    assert len(set(everything)) == 200


def completion(
    delivery_id: str, number: int, *, status: int = 200, retry_at: datetime | None = None
) -> Completion:
    """Attempt `number` of a delivery to s1 answered `status`: it succeeds, or is retried
    at `retry_at`."""
    return Completion(
        delivery_id=delivery_id,
        tenant="acme",
        subscription_id="s1",
        attempt=attempt(number, status),
        state=DeliveryState.SUCCEEDED if retry_at is None else DeliveryState.RETRYING,
        next_attempt_time=retry_at,
        endpoint_failed=retry_at is not None,
    )


def test_an_expired_lease_is_claimed_again_and_the_late_worker_is_fenced_off(
    store: DeliveryStore,
) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    (held,) = claim(store, "crashed", limit=1, now=NOW)
    assert claim(store, "other", limit=1, now=NOW + LEASE / 2) == []
    (taken,) = claim(store, "other", limit=1, now=NOW + LEASE * 2)
    assert taken.id == held.id
    late = completion(held.id, held.attempt_count + 1)
    store.complete([late], owner="crashed", now=NOW + LEASE * 2)
    assert store.get(held.id, tenant="acme").state is DeliveryState.RETRYING
    store.complete(
        [completion(held.id, taken.attempt_count + 1)], owner="other", now=NOW + LEASE * 2
    )
    delivery = store.get(held.id, tenant="acme")
    assert delivery.state is DeliveryState.SUCCEEDED
    assert [(a.number, a.status_code, a.interrupted) for a in delivery.attempts] == [
        (1, 0, True),
        (2, 200, False),
    ]


def test_a_lease_that_ran_out_leaves_one_interrupted_attempt_and_the_next_number_follows(
    store: DeliveryStore,
) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    (first,) = claim(store, "crashed", now=NOW)
    store.complete([completion(first.id, 1, status=503, retry_at=NOW)], owner="crashed", now=NOW)
    second = NOW + timedelta(seconds=1)
    assert taken(claim_batch(store, "crashed", now=second)) == [(first.id, 1, False)]

    # Its worker dies with attempt 2 in flight; the lease runs out, another claims it.
    later = second + LEASE * 2
    assert taken(claim_batch(store, "other", now=later)) == [(first.id, 2, True)]
    delivery = store.get(first.id, tenant="acme")
    assert (delivery.state, delivery.attempt_count) == (DeliveryState.RETRYING, 2)
    cut_short = delivery.attempts[-1]
    assert cut_short == Attempt.interrupted_at(number=2, claim_time=second)
    assert (cut_short.status_code, cut_short.error) == (0, INTERRUPTED_ERROR)
    assert claim(store, "third", now=later + LEASE / 2) == []

    # Attempt 3 fails: the endpoint's run counts it and attempt 1, not the interruption.
    health = store.complete(
        [completion(first.id, 3, status=503, retry_at=later)], owner="other", now=later
    )
    assert [h.consecutive_failures for h in health] == [2]
    (again,) = claim(store, "other", now=later)
    store.complete([completion(first.id, again.attempt_count + 1)], owner="other", now=later)
    delivery = store.get(first.id, tenant="acme")
    assert [(a.number, a.status_code, a.interrupted) for a in delivery.attempts] == [
        (1, 503, False),
        (2, 0, True),
        (3, 503, False),
        (4, 200, False),
    ]
    assert (delivery.state, delivery.attempt_count) == (DeliveryState.SUCCEEDED, 4)


def test_leases_given_back_or_ended_by_an_answer_leave_no_interrupted_attempt(
    store: DeliveryStore,
) -> None:
    store.ingest([event(f"m{i}", "s1") for i in range(3)], now=NOW)
    given_back, released, answered = claim(store, "w", now=NOW)
    store.unclaim(ids=[given_back.id], owner="w")
    store.complete([completion(answered.id, 1, status=503, retry_at=NOW)], owner="w", now=NOW)
    store.release(owner="w")  # on shutdown
    again = claim_batch(store, "w2", now=NOW + LEASE * 2)
    assert taken(again) == [
        (given_back.id, 0, False),
        (released.id, 0, False),
        (answered.id, 1, False),
    ]
    assert [len(store.get(d.id, tenant=None).attempts) for d in again.deliveries] == [0, 0, 1]


def test_a_delivery_whose_last_attempt_is_interrupted_is_dead_and_not_sent_again(
    store: DeliveryStore,
) -> None:
    """A delivery that kills its dispatcher every time is not sent forever."""
    store.ingest([event("poison", "s1")], now=NOW)
    (sent,) = claim(store, "w", now=NOW)
    at = NOW
    for number in range(1, ATTEMPTS):
        at += LEASE * 2
        assert taken(claim_batch(store, "w", now=at)) == [(sent.id, number, True)]
    at += LEASE * 2
    batch = claim_batch(store, "w", now=at)
    assert (batch.deliveries, batch.interrupted) == ([], [])
    assert [(d.id, d.attempt_count) for d in batch.dead] == [(sent.id, ATTEMPTS)]
    delivery = store.get(sent.id, tenant=None)
    assert (delivery.state, delivery.next_attempt_time) == (DeliveryState.DEAD, None)
    assert [(a.number, a.interrupted) for a in delivery.attempts] == [
        (n, True) for n in range(1, ATTEMPTS + 1)
    ]
    assert claim(store, "w", now=at + LEASE * 2) == []
    # A redelivery is one more attempt, and an interrupted one ends it again.
    store.redeliver_event(tenant=None, message_id="poison", subscription_id=None, now=at)
    assert taken(claim_batch(store, "w", now=at)) == [(sent.id, ATTEMPTS, False)]
    batch = claim_batch(store, "w", now=at + LEASE * 2)
    assert [(d.id, d.attempt_count) for d in batch.dead] == [(sent.id, ATTEMPTS + 1)]


def test_a_redelivery_keeps_a_lease_that_ran_out_so_its_cut_short_attempt_is_recorded(
    store: DeliveryStore,
) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    (held,) = claim(store, "crashed", now=NOW)
    later = NOW + LEASE * 2
    assert store.redeliver_event(
        tenant="acme", message_id="m1", subscription_id=None, now=later
    ) == [held.id]
    assert taken(claim_batch(store, "other", now=later)) == [(held.id, 1, True)]
    assert [a.interrupted for a in store.get(held.id, tenant=None).attempts] == [True]


def test_a_lease_taken_before_claim_times_were_kept_is_timed_a_lease_before_it_ran_out(
    store: DeliveryStore, engine: Engine
) -> None:
    """Deliveries leased by a dispatcher older than the claim_time column, when it dies."""
    store.ingest([event("m1", "s1")], now=NOW)
    (held,) = claim(store, "older", now=NOW)
    deliveries = DeliveryRow.__table__  # type: ignore[attr-defined]
    with engine.begin() as connection:
        connection.execute(sa.update(deliveries).values(claim_time=None))
    later = NOW + LEASE * 3
    assert taken(claim_batch(store, "newer", now=later)) == [(held.id, 1, True)]
    (cut_short,) = store.get(held.id, tenant=None).attempts
    assert cut_short == Attempt.interrupted_at(number=1, claim_time=later - LEASE)


def test_concurrent_claimers_record_each_cut_short_attempt_once(store: DeliveryStore) -> None:
    store.ingest([event(f"m{i}", "s1", "s2") for i in range(50)], now=NOW)
    assert len(claim(store, "crashed", now=NOW, limit=100)) == 100
    later = NOW + LEASE * 2
    claimed: dict[str, list[tuple[str, int, bool]]] = {}

    def claimer(owner: str) -> None:
        mine = claimed.setdefault(owner, [])
        while batch := taken(claim_batch(store, owner, limit=7, now=later)):
            mine.extend(batch)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = [each for batch in claimed.values() for each in batch]
    assert len({delivery_id for delivery_id, _, _ in everything}) == len(everything) == 100
    assert {(count, cut_short) for _, count, cut_short in everything} == {(1, True)}
    for delivery_id, _, _ in everything:
        attempts = store.get(delivery_id, tenant=None).attempts
        assert [(a.number, a.interrupted) for a in attempts] == [(1, True)]


def test_retrying_deliveries_wait_for_their_time_and_keep_every_attempt(
    store: DeliveryStore,
) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    (claimed,) = claim(store, "w", limit=1, now=NOW)
    retry_at = NOW + timedelta(seconds=5)
    store.complete(
        [
            Completion(
                delivery_id=claimed.id,
                tenant="acme",
                subscription_id="s1",
                attempt=attempt(1, status=503),
                state=DeliveryState.RETRYING,
                next_attempt_time=retry_at,
                endpoint_failed=True,
            )
        ],
        owner="w",
        now=NOW,
    )
    assert claim(store, "w", limit=1, now=retry_at - timedelta(milliseconds=1)) == []
    (again,) = claim(store, "w", limit=1, now=retry_at)
    assert again.attempt_count == 1
    store.complete(
        [
            Completion(
                tenant="acme",
                subscription_id="s1",
                endpoint_failed=False,
                delivery_id=again.id,
                attempt=attempt(2),
                state=DeliveryState.SUCCEEDED,
                next_attempt_time=None,
            )
        ],
        owner="w",
        now=retry_at,
    )
    delivery = store.get(claimed.id, tenant=None)
    assert [(a.number, a.status_code) for a in delivery.attempts] == [(1, 503), (2, 200)]
    assert delivery.attempt_count == 2


def test_get_hides_other_tenants_deliveries(store: DeliveryStore) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    (claimed,) = claim(store, "w", limit=1, now=NOW)
    with pytest.raises(NotFound):
        store.get(claimed.id, tenant="globex")


def test_redelivery_reschedules_dead_deliveries_but_not_those_in_flight(
    store: DeliveryStore,
) -> None:
    store.ingest([event("m1", "s1"), event("m2", "s1")], now=NOW)
    first, _second = claim(store, "w", limit=2, now=NOW)
    store.complete(
        [
            Completion(
                tenant="acme",
                subscription_id="s1",
                endpoint_failed=True,
                delivery_id=first.id,
                attempt=attempt(1, 500),
                state=DeliveryState.DEAD,
                next_attempt_time=None,
            )
        ],
        owner="w",
        now=NOW,
    )
    later = NOW + timedelta(seconds=1)
    replayed = store.redeliver_failed(tenant="acme", subscription_id="s1", since=NOW, now=later)
    assert replayed == [first.id]
    (again,) = claim(store, "w2", limit=5, now=later)
    assert again.id == first.id
    with pytest.raises(NotFound):
        store.redeliver_event(tenant="globex", message_id="m1", subscription_id=None, now=later)


def test_endpoint_health_counts_failures_in_a_row_and_a_success_resets_it(
    store: DeliveryStore,
) -> None:
    store.ingest([event(f"m{i}", "s1") for i in range(4)], now=NOW)
    claimed = claim(store, "w", limit=4, now=NOW)

    def complete(index: int, *, failed: bool, at: datetime) -> list[int]:
        health = store.complete(
            [
                Completion(
                    delivery_id=claimed[index].id,
                    tenant="acme",
                    subscription_id="s1",
                    attempt=attempt(1, 500 if failed else 200),
                    state=DeliveryState.DEAD if failed else DeliveryState.SUCCEEDED,
                    next_attempt_time=None,
                    endpoint_failed=failed,
                )
            ],
            owner="w",
            now=at,
        )
        assert all(h.first_failure_time <= at for h in health)
        return [h.consecutive_failures for h in health]

    assert complete(0, failed=True, at=NOW) == [1]
    assert complete(1, failed=True, at=NOW + LEASE) == [2]
    assert complete(2, failed=False, at=NOW + LEASE) == []
    assert complete(3, failed=True, at=NOW + LEASE * 2) == [1]
