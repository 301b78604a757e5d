"""Retention on SQLite and PostgreSQL: what pruning deletes and keeps, in bounded batches;
payloads expunged and the redeliveries they refuse; one replica at a time; and a
redelivery racing a batch of the same event."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dispatcher_service import delivery_queries
from dispatcher_service.database import create_engine, migrate
from dispatcher_service.domain import (
    DUE_STATES,
    DeliveryQuery,
    DeliveryState,
    HandOff,
    PreparedEvent,
    Target,
)
from dispatcher_service.models import AttemptRow, DeliveryRow, EventRow
from dispatcher_service.pruner import Pruner
from dispatcher_service.pruning import EventPruner
from dispatcher_service.retention import PrunedRows, RetentionPolicy, prunable
from dispatcher_service.store import DeliveryStore
from service_common.database import as_utc
from service_common.errors import FailedPrecondition, NotFound
from tests.conftest import PostgresDatabase

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAYS = 30
CUTOFF = NOW - timedelta(days=DAYS)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=1)
LEASE = timedelta(seconds=30)

EVENTS = EventRow.__table__  # type: ignore[attr-defined]
DELIVERIES = DeliveryRow.__table__  # type: ignore[attr-defined]
ATTEMPTS = AttemptRow.__table__  # type: ignore[attr-defined]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> DeliveryStore:
    return DeliveryStore(engine)


@pytest.fixture
def pruner(engine: Engine) -> EventPruner:
    return EventPruner(engine)


def event(message_id: str, *subscriptions: str) -> PreparedEvent:
    return PreparedEvent(
        tenant="acme",
        message_id=message_id,
        message_type="event.claim.created.v1",
        payload=f'{{"messageId":"{message_id}"}}',
        targets=tuple(Target(s, f"https://{s}.example.com/in") for s in subscriptions),
    )


def seed(
    store: DeliveryStore,
    engine: Engine,
    message_id: str,
    *ends: tuple[DeliveryState, datetime],
    at: datetime = OLD,
) -> None:
    """Event `message_id`, created `at`, with a delivery for each of `ends` (the state it
    is in, and when it last changed), each with one attempt. Stored leased, so that the
    worker of a running dispatcher never takes them meanwhile."""
    subscriptions = [f"s{i}" for i in range(len(ends))]
    seeding = HandOff(
        owner="seed",
        lease_expires=at + timedelta(days=999),
        counts=dict.fromkeys(subscriptions, 1),
    )
    store.ingest([event(message_id, *subscriptions)], now=at, hand_off=seeding)
    for subscription, (state, changed) in zip(subscriptions, ends, strict=True):
        finish(engine, message_id, subscription, state, changed)


def finish(
    engine: Engine, message_id: str, subscription: str, state: DeliveryState, at: datetime
) -> None:
    with engine.begin() as connection:
        (delivery_id,) = connection.execute(
            sa.update(DELIVERIES)
            .where(
                DELIVERIES.c.message_id == message_id,
                DELIVERIES.c.subscription_id == subscription,
            )
            .values(
                state=state.value,
                attempt_count=1,
                next_attempt_time=at if state in DUE_STATES else None,
                lease_owner=None,
                lease_expires=None,
                update_time=at,
            )
            .returning(DELIVERIES.c.id)
        ).one()
        connection.execute(
            sa.insert(ATTEMPTS).values(
                delivery_id=delivery_id,
                number=1,
                start_time=at,
                status_code=200 if state is DeliveryState.SUCCEEDED else 500,
                error="",
                response_snippet="",
            )
        )


def message_ids(engine: Engine, table: sa.Table) -> list[str]:
    """The message ids of what `table` holds, one per row, sorted."""
    with engine.connect() as connection:
        if table is ATTEMPTS:
            statement = sa.select(DELIVERIES.c.message_id).join(
                ATTEMPTS, ATTEMPTS.c.delivery_id == DELIVERIES.c.id
            )
        else:
            statement = sa.select(table.c.message_id)
        return sorted(connection.execute(statement).scalars())


def by_rule(engine: Engine) -> set[str]:
    """The message ids `retention.prunable` says go, read from the rows."""
    with engine.connect() as connection:
        events = connection.execute(
            sa.select(EVENTS.c.id, EVENTS.c.message_id, EVENTS.c.create_time)
        )
        rows = connection.execute(
            sa.select(DELIVERIES.c.event_id, DELIVERIES.c.state, DELIVERIES.c.update_time)
        ).all()
        return {
            message_id
            for event_id, message_id, created in events
            if prunable(
                as_utc(created),
                [(DeliveryState(s), as_utc(t)) for e, s, t in rows if e == event_id],
                cutoff=CUTOFF,
            )
        }


SUCCEEDED_OLD = (DeliveryState.SUCCEEDED, OLD)
DEAD_OLD = (DeliveryState.DEAD, OLD + timedelta(days=1))


def seed_the_mix(store: DeliveryStore, engine: Engine) -> None:
    seed(store, engine, "old-ok", SUCCEEDED_OLD, SUCCEEDED_OLD)
    seed(store, engine, "old-dead", SUCCEEDED_OLD, DEAD_OLD)
    seed(store, engine, "old-due", SUCCEEDED_OLD, (DeliveryState.RETRYING, OLD))
    seed(store, engine, "old-redelivered", (DeliveryState.SUCCEEDED, RECENT))
    seed(store, engine, "new-ok", SUCCEEDED_OLD, at=RECENT)
    seed(store, engine, "old-bare")
    # Never attempted, still pending after all this time (its endpoint was full, say).
    seed(store, engine, "old-pending")
    store.ingest([event("old-pending-2", "s0")], now=OLD)


def test_pruning_deletes_exactly_the_finished_events_older_than_the_window(
    store: DeliveryStore, engine: Engine, pruner: EventPruner
) -> None:
    seed_the_mix(store, engine)
    expected = {"old-ok", "old-dead", "old-bare", "old-pending"}
    assert by_rule(engine) == expected
    before = {table.name: message_ids(engine, table) for table in (EVENTS, DELIVERIES, ATTEMPTS)}

    assert pruner.prune_batch(CUTOFF, 100) == PrunedRows(events=4, deliveries=4, attempts=4)

    for table in (EVENTS, DELIVERIES, ATTEMPTS):
        kept = [m for m in before[table.name] if m not in expected]
        assert message_ids(engine, table) == kept, table.name
    assert pruner.prune_batch(CUTOFF, 100) == PrunedRows()


def test_batches_take_the_oldest_first_and_repeated_batches_finish_the_job(
    store: DeliveryStore, engine: Engine, pruner: EventPruner
) -> None:
    for number in range(25):
        at = OLD + timedelta(minutes=number)
        seed(store, engine, f"m{number:02}", (DeliveryState.SUCCEEDED, at), at=at)
    seed(store, engine, "kept", (DeliveryState.PENDING, OLD))

    first = pruner.prune_batch(CUTOFF, 10)
    assert first == PrunedRows(events=10, deliveries=10, attempts=10)
    assert message_ids(engine, EVENTS) == ["kept"] + [f"m{n:02}" for n in range(10, 25)]
    assert [pruner.prune_batch(CUTOFF, 10).events for _ in range(3)] == [10, 5, 0]
    assert message_ids(engine, EVENTS) == ["kept"]


def test_a_preview_counts_what_a_run_then_does(
    store: DeliveryStore, engine: Engine, pruner: EventPruner
) -> None:
    seed_the_mix(store, engine)
    seed(store, engine, "mid-ok", SUCCEEDED_OLD, at=NOW - timedelta(days=20))
    expunge_cutoff = NOW - timedelta(days=7)

    preview = pruner.preview(CUTOFF, expunge_cutoff)

    assert preview.pruned == PrunedRows(events=4, deliveries=4, attempts=4)
    assert preview.oldest == OLD
    # Of what is kept: mid-ok is finished and old enough; new-ok changed too recently.
    assert preview.expunged == 1
    assert message_ids(engine, EVENTS)  # nothing changed
    assert pruner.prune_batch(CUTOFF, 100).events == 4
    assert pruner.expunge_batch(expunge_cutoff, 100, now=NOW) == 1


def payloads(engine: Engine) -> dict[str, tuple[str, datetime | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(EVENTS.c.message_id, EVENTS.c.payload, EVENTS.c.payload_expunge_time)
        )
        return {m: (p, None if t is None else as_utc(t)) for m, p, t in rows}


def test_expunging_empties_old_payloads_and_keeps_every_row(
    store: DeliveryStore, engine: Engine, pruner: EventPruner
) -> None:
    seed_the_mix(store, engine)
    before = {table.name: message_ids(engine, table) for table in (EVENTS, DELIVERIES, ATTEMPTS)}

    assert pruner.expunge_batch(CUTOFF, 2, now=NOW) == 2
    assert pruner.expunge_batch(CUTOFF, 100, now=NOW) == 2
    assert pruner.expunge_batch(CUTOFF, 100, now=NOW) == 0

    kept = payloads(engine)
    for message_id in ("old-ok", "old-dead", "old-bare", "old-pending"):
        assert kept.pop(message_id) == ("", NOW)
    assert all(payload.startswith("{") and when is None for payload, when in kept.values())
    for table in (EVENTS, DELIVERIES, ATTEMPTS):
        assert message_ids(engine, table) == before[table.name]


def test_an_expunged_event_is_not_delivered_again(
    store: DeliveryStore, engine: Engine, pruner: EventPruner
) -> None:
    seed(store, engine, "gone", SUCCEEDED_OLD, DEAD_OLD)
    pruner.expunge_batch(CUTOFF, 100, now=NOW)

    with pytest.raises(FailedPrecondition) as refused:
        store.redeliver_event(tenant="acme", message_id="gone", subscription_id=None, now=NOW)
    assert str(refused.value) == (
        "the payload of event gone was expunged on 2026-06-01 "
        "(DISPATCHER_PAYLOAD_RETENTION_DAYS); it cannot be delivered again"
    )
    with pytest.raises(NotFound):
        store.redeliver_event(tenant="acme", message_id="never", subscription_id=None, now=NOW)


def test_replaying_a_subscription_skips_expunged_events_and_refuses_when_all_are(
    store: DeliveryStore, engine: Engine, pruner: EventPruner
) -> None:
    seed(store, engine, "gone-1", DEAD_OLD)
    seed(store, engine, "gone-2", DEAD_OLD)
    pruner.expunge_batch(CUTOFF, 100, now=NOW)
    since = OLD - timedelta(days=1)

    with pytest.raises(FailedPrecondition, match="the payloads of the 2 events asked for"):
        store.redeliver_failed(tenant="acme", subscription_id="s0", since=since, now=NOW)
    seed(store, engine, "kept", (DeliveryState.DEAD, RECENT), at=RECENT)
    replayed = store.redeliver_failed(tenant="acme", subscription_id="s0", since=since, now=NOW)
    assert len(replayed) == 1
    with engine.connect() as connection:
        rows = connection.execute(sa.select(DELIVERIES.c.message_id, DELIVERIES.c.state))
        states: dict[str, str] = dict(rows.all())
    assert states == {"gone-1": "dead", "gone-2": "dead", "kept": "pending"}
    assert store.redeliver_failed(tenant="acme", subscription_id="s0", since=NOW, now=NOW) == []


def test_a_due_delivery_of_an_expunged_event_is_never_sent_and_ends_dead_saying_why(
    store: DeliveryStore, engine: Engine, pruner: EventPruner
) -> None:
    seed(store, engine, "gone", SUCCEEDED_OLD)
    pruner.expunge_batch(CUTOFF, 100, now=NOW)
    # Made due behind the store's back: nothing the services do gets here.
    with engine.begin() as connection:
        connection.execute(
            sa.update(DELIVERIES).values(state="pending", next_attempt_time=OLD, update_time=NOW)
        )
    store.ingest([event("fresh", "s0")], now=NOW)

    claimed = store.claim(owner="w", limit=10, now=NOW, lease=LEASE, max_attempts=3)
    assert [d.message_id for d in claimed.deliveries] == ["fresh"]
    assert pruner.end_stranded(now=NOW, limit=10) == 1
    assert pruner.end_stranded(now=NOW, limit=10) == 0

    (listed,), _ = store.page(
        DeliveryQuery(tenant="acme", page_size=10, message_id="gone"), after=None
    )
    delivery = store.get(listed.id, tenant="acme")
    assert (delivery.state, delivery.attempt_count) == (DeliveryState.DEAD, 2)
    assert delivery.attempts[-1].number == 2
    assert delivery.attempts[-1].error == (
        "the payload of event gone was expunged on 2026-06-01 "
        "(DISPATCHER_PAYLOAD_RETENTION_DAYS); it cannot be delivered again"
    )


@pytest.fixture
def postgres_engine(postgres_database: PostgresDatabase) -> Iterator[Engine]:
    engine = create_engine(postgres_database.url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.mark.postgres
async def test_one_replica_at_a_time_takes_the_turn_to_prune(
    postgres_database: PostgresDatabase, postgres_engine: Engine
) -> None:
    other_engine = create_engine(postgres_database.url)
    try:
        first, second = EventPruner(postgres_engine), EventPruner(other_engine)
        held = first.try_lock()
        assert held is not None
        assert second.try_lock() is None
        skipped = Pruner(
            pruner=second, policy=RetentionPolicy(days=DAYS), interval=60, batch_size=10
        )
        assert await skipped.run_once() is None
        held.release()
        again = second.try_lock()
        assert again is not None
        again.release()
    finally:
        other_engine.dispose()


@pytest.mark.postgres
def test_a_batch_skips_an_event_being_redelivered_and_keeps_it_once_that_commits(
    postgres_engine: Engine,
) -> None:
    store, pruner = DeliveryStore(postgres_engine), EventPruner(postgres_engine)
    seed(store, postgres_engine, "busy", DEAD_OLD)
    seed(store, postgres_engine, "idle", DEAD_OLD)
    with postgres_engine.connect() as redelivering, redelivering.begin():
        delivery_queries.redeliver_event(
            redelivering, tenant="acme", message_id="busy", subscription_id=None, now=NOW
        )
        # Not committed yet: the batch neither waits for it nor deletes under it.
        assert pruner.prune_batch(CUTOFF, 10) == PrunedRows(events=1, deliveries=1, attempts=1)
    assert pruner.prune_batch(CUTOFF, 10) == PrunedRows()
    assert message_ids(postgres_engine, DELIVERIES) == ["busy"]


@pytest.mark.postgres
@pytest.mark.parametrize("batch", ["prune", "expunge"])
def test_a_redelivery_waits_for_a_batch_holding_its_event_then_finds_what_it_left(
    postgres_engine: Engine, batch: str
) -> None:
    store = DeliveryStore(postgres_engine)
    seed(store, postgres_engine, "held", DEAD_OLD)
    answered: list[BaseException | list[str]] = []

    def redeliver() -> None:
        try:
            answered.append(
                store.redeliver_event(
                    tenant="acme", message_id="held", subscription_id=None, now=NOW
                )
            )
        except (NotFound, FailedPrecondition) as refused:
            answered.append(refused)

    with postgres_engine.connect() as holding, holding.begin():
        # What a batch does once it picked the event: lock it, then change it.
        holding.execute(
            sa.select(EVENTS.c.id).where(EVENTS.c.message_id == "held").with_for_update()
        )
        thread = threading.Thread(target=redeliver)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), "the redelivery did not wait for the batch"
        if batch == "prune":
            for table in (ATTEMPTS, DELIVERIES, EVENTS):
                holding.execute(sa.delete(table))
        else:
            holding.execute(sa.update(EVENTS).values(payload="", payload_expunge_time=NOW))
    thread.join(10)
    (answer,) = answered
    assert isinstance(answer, NotFound if batch == "prune" else FailedPrecondition)
