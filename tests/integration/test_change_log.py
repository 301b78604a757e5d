"""The change log on SQLite and PostgreSQL: one row per committed write, none for a
refused one, and pruning that keeps a prefix-free log with its newest row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service_common.errors import NotFound, StaleEtag
from subscription_service.change_log import ChangeLog
from subscription_service.database import create_engine, migrate
from subscription_service.domain import (
    ChangeType,
    NewSubscription,
    SignatureAlgorithm,
    SubscriptionPatch,
)
from subscription_service.store import SubscriptionStore

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def new(tenant: str = "acme") -> NewSubscription:
    return NewSubscription(
        tenant=tenant,
        url=f"https://{tenant}.example.com/hooks",
        message_types=("event.claim.*",),
        enabled=True,
        description="",
        signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
        secret=SECRET,
    )


def rows(engine: Engine) -> list[tuple[int, str, str, int, dict[str, object]]]:
    with engine.connect() as connection:
        found = connection.execute(
            sa.text(
                "SELECT position, subscription_id, change_type, version, state "
                "FROM subscription_changes ORDER BY position"
            )
        )
        return [(p, s, t, v, json.loads(state)) for p, s, t, v, state in found]


def test_each_write_appends_its_change_with_the_state_after_it(engine: Engine) -> None:
    store, changes = SubscriptionStore(engine), ChangeLog(engine)
    created = store.create(new(), now=T0)
    store.update(
        created.id,
        tenant="acme",
        patch=SubscriptionPatch(description="renamed", message_types=("event.note.*",)),
        expected_version=1,
        now=T0 + timedelta(seconds=1),
    )
    store.delete(created.id, tenant="acme", expected_version=2, now=T0 + timedelta(seconds=2))

    logged = rows(engine)
    assert [(sid, kind, version) for _, sid, kind, version, _ in logged] == [
        (created.id, "created", 1),
        (created.id, "updated", 2),
        (created.id, "deleted", 2),
    ]
    positions = [position for position, *_ in logged]
    assert positions == sorted(set(positions))
    assert logged[1][4]["description"] == "renamed"
    assert logged[1][4]["message_types"] == ["event.note.*"]
    assert logged[1][4]["secret"] == SECRET, "the dispatcher's watch needs it"
    assert logged[2][4]["secret"] is None, "a deletion does not keep the secret"

    read = changes.after(0, limit=10)
    assert [(c.type, c.subscription.version, c.position) for c in read] == [
        (ChangeType.CREATED, 1, positions[0]),
        (ChangeType.UPDATED, 2, positions[1]),
        (ChangeType.DELETED, 2, positions[2]),
    ]
    assert read[0].subscription == created
    assert changes.newest() == positions[2]
    assert changes.after(positions[1], limit=10) == read[2:]


def test_a_refused_write_leaves_no_change(engine: Engine) -> None:
    store = SubscriptionStore(engine)
    created = store.create(new(), now=T0)
    patch = SubscriptionPatch(description="late")

    with pytest.raises(StaleEtag):
        store.update(created.id, tenant="acme", patch=patch, expected_version=7, now=T0)
    with pytest.raises(StaleEtag):
        store.delete(created.id, tenant="acme", expected_version=7, now=T0)
    with pytest.raises(NotFound):
        store.update(created.id, tenant="globex", patch=patch, expected_version=None, now=T0)
    with pytest.raises(NotFound):
        store.delete("sub_missing", tenant=None, expected_version=None, now=T0)

    assert [kind for _, _, kind, _, _ in rows(engine)] == ["created"]


def test_a_snapshot_reflects_exactly_the_changes_up_to_its_position(engine: Engine) -> None:
    store = SubscriptionStore(engine)
    assert store.snapshot(tenant=None) == ([], 0)
    first = store.create(new(), now=T0)
    second = store.create(new("globex"), now=T0 + timedelta(seconds=1))

    subscriptions, position = store.snapshot(tenant="acme")

    assert subscriptions == [first]
    assert position == ChangeLog(engine).newest() == rows(engine)[-1][0]
    assert store.snapshot(tenant=None)[0] == [first, second]


def test_resuming_reads_the_changes_after_a_position_while_the_log_has_them(
    engine: Engine,
) -> None:
    store, changes = SubscriptionStore(engine), ChangeLog(engine)
    acme = store.create(new(), now=T0)
    store.create(new("globex"), now=T0)
    store.delete(acme.id, tenant=None, expected_version=None, now=T0)
    first, _, last = (position for position, *_ in rows(engine))

    missed = changes.resume(first, tenant="acme", limit=100)
    assert missed is not None
    assert [(c.type, c.position) for c in missed] == [(ChangeType.DELETED, last)]
    assert changes.resume(last, tenant=None, limit=100) == []
    assert changes.resume(last + 1, tenant=None, limit=100) is None, "beyond the newest"
    assert changes.resume(first, tenant=None, limit=1) is None, "further behind than allowed"


def test_pruning_deletes_old_changes_oldest_first_but_keeps_the_newest(engine: Engine) -> None:
    store, changes = SubscriptionStore(engine), ChangeLog(engine)
    made = [store.create(new(), now=T0 + timedelta(hours=hour)) for hour in range(5)]
    positions = [position for position, *_ in rows(engine)]

    assert changes.prune(before=T0 + timedelta(hours=2), batch=1) == 2
    assert [position for position, *_ in rows(engine)] == positions[2:]
    assert changes.resume(positions[0], tenant=None, limit=100) is None, "pruned"
    assert changes.resume(positions[1], tenant=None, limit=100) is not None

    assert changes.prune(before=T0 + timedelta(days=9), batch=2) == 2
    assert [position for position, *_ in rows(engine)] == positions[-1:]
    # A new change still gets a greater position than every change ever pruned.
    store.delete(made[0].id, tenant=None, expected_version=None, now=T0 + timedelta(days=10))
    changes.prune(before=T0 + timedelta(days=11))
    assert rows(engine)[0][0] > positions[-1]


def test_pruning_never_leaves_a_gap_behind_a_change_that_looks_older(engine: Engine) -> None:
    """A replica whose clock is behind writes a change that looks older than the one
    before it: pruning stops at the first change that is not old enough."""
    store, changes = SubscriptionStore(engine), ChangeLog(engine)
    for moment in (T0, T0 + timedelta(hours=5), T0 + timedelta(hours=1), T0 + timedelta(hours=6)):
        store.create(new(), now=moment)
    positions = [position for position, *_ in rows(engine)]

    assert changes.prune(before=T0 + timedelta(hours=2)) == 1
    assert [position for position, *_ in rows(engine)] == positions[1:]
