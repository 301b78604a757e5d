"""The dispatcher's store on SQLite and PostgreSQL: ingestion, claims with leases, attempts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.domain import (
    Attempt,
    Completion,
    DeliveryQuery,
    DeliveryState,
    PreparedEvent,
    Target,
)
from dispatcher_service.store import DeliveryStore
from service_common.errors import NotFound

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
LEASE = timedelta(seconds=30)


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
    outcomes = store.ingest([event("m1", "s1", "s2"), event("m2"), event("m1", "s1")], now=NOW)
    assert [(o.message_id, o.duplicate, o.deliveries) for o in outcomes] == [
        ("m1", False, 2),
        ("m2", False, 0),
        ("m1", True, 0),
    ]
    again = store.ingest([event("m1", "s1", "s2"), event("m1", "s3", tenant="globex")], now=NOW)
    assert [(o.duplicate, o.deliveries) for o in again] == [(True, 0), (False, 1)]
    page, _ = store.page(DeliveryQuery(tenant="acme", page_size=10), after=None)
    assert sorted(d.subscription_id for d in page) == ["s1", "s2"]


def test_claims_skip_excluded_subscriptions_or_look_after_a_time_or_at_one_subscription(
    store: DeliveryStore,
) -> None:
    store.ingest([event("old-slow", "slow"), event("old-ok", "ok")], now=NOW)
    later = NOW + timedelta(seconds=10)
    store.ingest([event("new-slow", "slow"), event("new-ok", "ok")], now=later)
    at = later + timedelta(seconds=1)

    def claim(**kwargs: object) -> list[str]:
        claimed = store.claim(owner="w", limit=10, now=at, lease=LEASE, **kwargs)  # type: ignore[arg-type]
        return [c.message_id for c in claimed]

    # Due after NOW + 5 s and not the slow subscription: the new delivery of "ok" only.
    assert claim(excluded={"slow"}, due_after=NOW + timedelta(seconds=5)) == ["new-ok"]
    assert claim(excluded={"slow"}) == ["old-ok"]
    assert claim(due_after=NOW + timedelta(seconds=5)) == ["new-slow"]
    assert claim(only="ok") == []
    assert claim(only="slow") == ["old-slow"]
    assert claim() == []


def test_a_claim_says_when_each_delivery_became_due(store: DeliveryStore) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    store.ingest([event("m2", "s1")], now=NOW + timedelta(seconds=3))
    claimed = store.claim(owner="w", limit=10, now=NOW + timedelta(seconds=5), lease=LEASE)
    assert [(c.message_id, c.due_time) for c in claimed] == [
        ("m1", NOW),
        ("m2", NOW + timedelta(seconds=3)),
    ]


def test_claims_lease_each_due_delivery_to_one_owner(store: DeliveryStore) -> None:
    store.ingest([event(f"m{i}", "s1") for i in range(10)], now=NOW)
    first = store.claim(owner="a", limit=6, now=NOW, lease=LEASE)
    second = store.claim(owner="b", limit=6, now=NOW, lease=LEASE)
    assert len(first) == 6
    assert len(second) == 4
    assert not {d.id for d in first} & {d.id for d in second}
    assert store.claim(owner="c", limit=6, now=NOW, lease=LEASE) == []
    assert first[0].payload.startswith('{"details"')


def test_concurrent_claimers_never_share_a_delivery(store: DeliveryStore) -> None:
    store.ingest([event(f"m{i}", "s1", "s2") for i in range(100)], now=NOW)
    claimed: dict[str, list[str]] = {}

    def claimer(owner: str) -> None:
        mine = claimed.setdefault(owner, [])
        while batch := store.claim(owner=owner, limit=7, now=NOW, lease=LEASE):
            mine.extend(d.id for d in batch)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = [i for ids in claimed.values() for i in ids]
    assert len(everything) == 200
    assert len(set(everything)) == 200


def test_an_expired_lease_is_claimed_again_and_the_late_worker_is_fenced_off(
    store: DeliveryStore,
) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    (held,) = store.claim(owner="crashed", limit=1, now=NOW, lease=LEASE)
    assert store.claim(owner="other", limit=1, now=NOW + LEASE / 2, lease=LEASE) == []
    (taken,) = store.claim(owner="other", limit=1, now=NOW + LEASE * 2, lease=LEASE)
    assert taken.id == held.id
    late = Completion(
        subscription_id="s1",
        endpoint_failed=False,
        delivery_id=held.id,
        attempt=attempt(1),
        state=DeliveryState.SUCCEEDED,
        next_attempt_time=None,
    )
    store.complete([late], owner="crashed", now=NOW + LEASE * 2)
    assert store.get(held.id, tenant="acme").state is DeliveryState.PENDING
    store.complete([late], owner="other", now=NOW + LEASE * 2)
    delivery = store.get(held.id, tenant="acme")
    assert delivery.state is DeliveryState.SUCCEEDED
    assert [a.number for a in delivery.attempts] == [1]


def test_retrying_deliveries_wait_for_their_time_and_keep_every_attempt(
    store: DeliveryStore,
) -> None:
    store.ingest([event("m1", "s1")], now=NOW)
    (claimed,) = store.claim(owner="w", limit=1, now=NOW, lease=LEASE)
    retry_at = NOW + timedelta(seconds=5)
    store.complete(
        [
            Completion(
                delivery_id=claimed.id,
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
    assert (
        store.claim(owner="w", limit=1, now=retry_at - timedelta(milliseconds=1), lease=LEASE) == []
    )
    (again,) = store.claim(owner="w", limit=1, now=retry_at, lease=LEASE)
    assert again.attempt_count == 1
    store.complete(
        [
            Completion(
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
    (claimed,) = store.claim(owner="w", limit=1, now=NOW, lease=LEASE)
    with pytest.raises(NotFound):
        store.get(claimed.id, tenant="globex")


def test_redelivery_reschedules_dead_deliveries_but_not_those_in_flight(
    store: DeliveryStore,
) -> None:
    store.ingest([event("m1", "s1"), event("m2", "s1")], now=NOW)
    first, _second = store.claim(owner="w", limit=2, now=NOW, lease=LEASE)
    store.complete(
        [
            Completion(
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
    (again,) = store.claim(owner="w2", limit=5, now=later, lease=LEASE)
    assert again.id == first.id
    with pytest.raises(NotFound):
        store.redeliver_event(tenant="globex", message_id="m1", subscription_id=None, now=later)


def test_endpoint_health_counts_failures_in_a_row_and_a_success_resets_it(
    store: DeliveryStore,
) -> None:
    store.ingest([event(f"m{i}", "s1") for i in range(4)], now=NOW)
    claimed = store.claim(owner="w", limit=4, now=NOW, lease=LEASE)

    def complete(index: int, *, failed: bool, at: datetime) -> list[int]:
        health = store.complete(
            [
                Completion(
                    delivery_id=claimed[index].id,
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
