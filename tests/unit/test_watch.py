"""Watching subscriptions: the change hub's fan-out, and what a watch stream sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast

import pytest

from service_common.auth import ALL_TENANTS, Caller, Scope
from service_common.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from subscription_service.change_feed import ChangeFeed
from subscription_service.change_log import ChangeLog
from subscription_service.domain import Change, ChangeType, SignatureAlgorithm, Subscription
from subscription_service.manager import Resumed, SnapshotComplete, SubscriptionManager, WatchItem
from subscription_service.store import SubscriptionStore
from subscription_service.watch import ChangeHub

T = TypeVar("T")
CREATED, UPDATED, DELETED = ChangeType.CREATED, ChangeType.UPDATED, ChangeType.DELETED
ACME_READER = Caller(tenant="acme", scopes=frozenset({Scope.SUBSCRIPTIONS_READ}))
PLATFORM = Caller(tenant=ALL_TENANTS, scopes=frozenset({Scope.ADMIN}))
WAIT_SECONDS = 5


def subscription(id_: str, version: int = 1, *, tenant: str = "acme") -> Subscription:
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    return Subscription(
        id=id_,
        tenant=tenant,
        url=f"https://{tenant}.example.com/{id_}",
        message_types=("event.claim.created.v1",),
        enabled=True,
        description=f"version {version}",
        signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
        secret=None,
        disabled_reason="",
        version=version,
        create_time=moment,
        update_time=moment,
    )


def change(
    kind: ChangeType, id_: str, version: int = 1, *, tenant: str = "acme", position: int = 0
) -> Change:
    return Change(kind, subscription(id_, version, tenant=tenant), position)


async def collect(stream: AsyncIterator[T]) -> list[T]:
    """Everything `stream` yields until it ends (the hub must be closed by then)."""
    async with asyncio.timeout(WAIT_SECONDS):
        return [item async for item in stream]


async def next_of(stream: AsyncIterator[T]) -> T:
    async with asyncio.timeout(WAIT_SECONDS):
        return await anext(stream)


# The hub


async def test_every_watcher_receives_every_change_in_publication_order() -> None:
    hub = ChangeHub(queue_size=100)
    changes = [change(CREATED, f"sub_{i}") for i in range(50)]
    with hub.watch() as first, hub.watch() as second:
        assert len(hub) == 2
        for published in changes:
            hub.publish(published)
        hub.close()
        assert await collect(first.changes()) == changes
        assert await collect(second.changes()) == changes
    assert len(hub) == 0


async def test_a_watcher_only_receives_changes_published_while_it_watches() -> None:
    hub = ChangeHub(queue_size=10)
    hub.publish(change(CREATED, "sub_before"))
    with hub.watch() as watcher:
        hub.publish(change(CREATED, "sub_during"))
        stream = watcher.changes()
        assert (await next_of(stream)).subscription.id == "sub_during"
    assert len(hub) == 0
    hub.publish(change(CREATED, "sub_after"))
    hub.close()
    # Gone from the hub, it hears neither later changes nor the close: anything queued
    # would be returned at once.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await anext(stream)


async def test_closing_the_hub_ends_a_stream_that_is_waiting() -> None:
    hub = ChangeHub(queue_size=10)
    with hub.watch() as watcher:
        waiting = asyncio.create_task(collect(watcher.changes()))
        await asyncio.sleep(0)
        hub.publish(change(CREATED, "sub_1"))
        hub.close()
        received = await waiting
    assert [c.subscription.id for c in received] == ["sub_1"]


async def test_a_watch_opened_after_close_ends_at_once() -> None:
    hub = ChangeHub(queue_size=10)
    hub.close()
    with hub.watch() as watcher:
        hub.publish(change(CREATED, "sub_1"))
        assert await collect(watcher.changes()) == []


async def test_a_watcher_exactly_queue_size_behind_loses_nothing() -> None:
    hub = ChangeHub(queue_size=3)
    changes = [change(CREATED, f"sub_{i}") for i in range(3)]
    with hub.watch() as watcher:
        for published in changes:
            hub.publish(published)
        hub.close()
        assert await collect(watcher.changes()) == changes


async def test_overflow_ends_only_the_slow_watcher_with_resource_exhausted() -> None:
    hub = ChangeHub(queue_size=2)
    changes = [change(CREATED, f"sub_{i}") for i in range(5)]
    with hub.watch() as fast, hub.watch() as slow:
        fast_stream = fast.changes()
        for published in changes:
            hub.publish(published)
            assert await next_of(fast_stream) == published
        hub.close()
        assert await collect(fast_stream) == []

        slow_stream = slow.changes()
        # What fitted is still delivered, then the stream fails so the client re-syncs.
        assert [await next_of(slow_stream) for _ in range(2)] == changes[:2]
        with pytest.raises(ResourceExhausted, match="watch again"):
            await next_of(slow_stream)


# SubscriptionManager.watch over a fake store and change log


class FakeStore:
    """Only what `watch` reads: the snapshot and its position, and the log after a position.

    `during_read` are changes committed while the snapshot is being read: they are
    published to the hub from the store's thread, before the snapshot is returned, as
    the change feed does when another request commits between the watch listening and
    reading. The snapshot reflects them, and the log's newest position is theirs.
    """

    def __init__(self, rows: Iterable[Subscription], *, hub: ChangeHub, position: int = 0) -> None:
        self.rows = {row.id: row for row in rows}
        self.hub = hub
        self.position = position
        self.log: list[Change] = []
        self.during_read: list[Change] = []
        self.tenants_read: list[str | None] = []
        self._loop = asyncio.get_running_loop()

    def snapshot(self, *, tenant: str | None) -> tuple[list[Subscription], int]:
        self.tenants_read.append(tenant)
        for committed in self.during_read:
            self.apply(committed)
            self._loop.call_soon_threadsafe(self.hub.publish, committed)
        found = [row for row in self.rows.values() if tenant is None or row.tenant == tenant]
        return found, self.position

    def apply(self, committed: Change) -> None:
        self.log.append(committed)
        self.position = committed.position
        if committed.type is DELETED:
            self.rows.pop(committed.subscription.id, None)
        else:
            self.rows[committed.subscription.id] = committed.subscription

    # What the manager reads of the change log.

    def newest(self) -> int:
        return self.position

    def resume(self, after: int, *, tenant: str | None, limit: int) -> list[Change] | None:
        if after > self.position:
            return None
        self.tenants_read.append(tenant)
        return [
            c
            for c in self.log
            if c.position > after and (tenant is None or c.subscription.tenant == tenant)
        ]


def manager_over(store: FakeStore) -> SubscriptionManager:
    feed = ChangeFeed(
        cast(ChangeLog, store), store.hub, poll_seconds=1, retention=timedelta(hours=1)
    )
    return SubscriptionManager(
        store=cast(SubscriptionStore, store),
        changes=cast(ChangeLog, store),
        feed=feed,
        known_message_types=(),
    )


Sent = tuple[str, str, int, int] | tuple[str, int]
Item = WatchItem | SnapshotComplete | Resumed


def sent(items: list[Item]) -> list[Sent]:
    """The stream as (what, id, version, position) tuples, markers as (what, position)."""
    return [
        ("snapshot complete", item.position)
        if isinstance(item, SnapshotComplete)
        else ("resumed", item.position)
        if isinstance(item, Resumed)
        else (
            item.change.value if item.change else "snapshot",
            item.subscription.id,
            item.subscription.version,
            item.position,
        )
        for item in items
    ]


async def test_watch_sends_the_snapshot_its_end_then_each_change_in_order() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([subscription("sub_a", 1), subscription("sub_b", 3)], hub=hub, position=7)
    stream = manager_over(store).watch(ACME_READER, tenant="")
    head = [await next_of(stream) for _ in range(3)]
    for published in (
        change(CREATED, "sub_c", 1, position=8),
        change(UPDATED, "sub_a", 2, position=9),
        change(DELETED, "sub_b", 3, position=11),
        change(UPDATED, "sub_c", 2, position=12),
    ):
        hub.publish(published)
    hub.close()

    assert sent(head + await collect(stream)) == [
        ("snapshot", "sub_a", 1, 0),
        ("snapshot", "sub_b", 3, 0),
        ("snapshot complete", 7),
        ("created", "sub_c", 1, 8),
        ("updated", "sub_a", 2, 9),
        ("deleted", "sub_b", 3, 11),
        ("updated", "sub_c", 2, 12),
    ]
    assert store.tenants_read == ["acme"]
    assert len(hub) == 0


async def test_changes_the_snapshot_already_reflects_are_not_sent_again() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([subscription("sub_a", 1)], hub=hub, position=1)
    store.during_read = [
        change(UPDATED, "sub_a", 2, position=2),
        change(CREATED, "sub_b", 1, position=3),
        change(CREATED, "sub_gone", 1, position=4),
        change(DELETED, "sub_gone", 1, position=5),
    ]
    stream = manager_over(store).watch(ACME_READER, tenant="")
    head = [await next_of(stream) for _ in range(3)]
    hub.publish(change(UPDATED, "sub_a", 3, position=6))
    hub.close()

    assert sent(head + await collect(stream)) == [
        ("snapshot", "sub_a", 2, 0),
        ("snapshot", "sub_b", 1, 0),
        ("snapshot complete", 5),
        ("updated", "sub_a", 3, 6),
    ]


async def test_a_change_published_again_or_out_of_order_is_dropped() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([subscription("sub_a", 1)], hub=hub, position=1)
    stream = manager_over(store).watch(ACME_READER, tenant="")
    head = [await next_of(stream) for _ in range(2)]
    hub.publish(change(UPDATED, "sub_a", 3, position=3))
    hub.publish(change(UPDATED, "sub_a", 3, position=3))
    hub.publish(change(UPDATED, "sub_a", 2, position=2))
    hub.close()

    assert sent(head + await collect(stream))[2:] == [("updated", "sub_a", 3, 3)]


async def test_a_tenant_watch_sees_only_its_tenant() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([subscription("sub_a"), subscription("sub_g", tenant="globex")], hub=hub)
    stream = manager_over(store).watch(ACME_READER, tenant="")
    head = [await next_of(stream) for _ in range(2)]
    hub.publish(change(CREATED, "sub_g2", tenant="globex", position=1))
    hub.publish(change(UPDATED, "sub_g", 2, tenant="globex", position=2))
    hub.publish(change(CREATED, "sub_a2", position=3))
    hub.close()

    items = head + await collect(stream)
    assert sent(items) == [
        ("snapshot", "sub_a", 1, 0),
        ("snapshot complete", 0),
        ("created", "sub_a2", 1, 3),
    ]
    assert store.tenants_read == ["acme"]


async def test_a_watch_for_every_tenant_sees_every_tenant_or_the_one_named() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([subscription("sub_a"), subscription("sub_g", tenant="globex")], hub=hub)
    everything = manager_over(store).watch(PLATFORM, tenant="")
    globex_only = manager_over(store).watch(PLATFORM, tenant="globex")
    everything_head = [await next_of(everything) for _ in range(3)]
    globex_head = [await next_of(globex_only) for _ in range(2)]
    hub.publish(change(CREATED, "sub_a2", position=1))
    hub.publish(change(CREATED, "sub_g2", tenant="globex", position=2))
    hub.close()

    assert sent(everything_head + await collect(everything)) == [
        ("snapshot", "sub_a", 1, 0),
        ("snapshot", "sub_g", 1, 0),
        ("snapshot complete", 0),
        ("created", "sub_a2", 1, 1),
        ("created", "sub_g2", 1, 2),
    ]
    assert sent(globex_head + await collect(globex_only)) == [
        ("snapshot", "sub_g", 1, 0),
        ("snapshot complete", 0),
        ("created", "sub_g2", 1, 2),
    ]
    assert store.tenants_read == [None, "globex"]


async def test_a_resumed_watch_sends_the_missed_changes_then_the_new_ones() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([], hub=hub)
    for committed in (
        change(CREATED, "sub_a", 1, position=1),
        change(CREATED, "sub_g", 1, tenant="globex", position=2),
        change(UPDATED, "sub_a", 2, position=3),
        change(DELETED, "sub_a", 2, position=4),
    ):
        store.apply(committed)
    stream = manager_over(store).watch(ACME_READER, tenant="", resume_after=1)
    head = [await next_of(stream) for _ in range(3)]
    # The feed may still publish what the resumed watch read from the log.
    hub.publish(change(DELETED, "sub_a", 2, position=4))
    hub.publish(change(CREATED, "sub_b", 1, position=5))
    hub.close()

    assert sent(head + await collect(stream)) == [
        ("resumed", 1),
        ("updated", "sub_a", 2, 3),
        ("deleted", "sub_a", 2, 4),
        ("created", "sub_b", 1, 5),
    ]
    assert store.tenants_read == ["acme"], "the log is read, not the snapshot"


async def test_a_watch_resuming_where_the_log_cannot_serve_gets_a_snapshot() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([], hub=hub)
    store.apply(change(CREATED, "sub_a", 1, position=1))
    stream = manager_over(store).watch(ACME_READER, tenant="", resume_after=9)
    head = [await next_of(stream) for _ in range(2)]
    hub.close()

    assert sent(head + await collect(stream)) == [
        ("snapshot", "sub_a", 1, 0),
        ("snapshot complete", 1),
    ]


async def test_a_negative_resume_position_is_invalid() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([], hub=hub)
    with pytest.raises(InvalidArgument) as refused:
        await next_of(manager_over(store).watch(ACME_READER, tenant="", resume_after=-1))
    assert [v.field for v in refused.value.violations] == ["resume_after"]
    assert len(hub) == 0


async def test_a_watch_without_the_read_scope_is_denied_before_listening() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([subscription("sub_a")], hub=hub)
    publisher = Caller(tenant="acme", scopes=frozenset({Scope.PUBLISH}))
    with pytest.raises(PermissionDenied):
        await next_of(manager_over(store).watch(publisher, tenant=""))
    assert store.tenants_read == []
    assert len(hub) == 0


async def test_a_tenant_watch_naming_another_tenant_is_denied() -> None:
    hub = ChangeHub(queue_size=100)
    store = FakeStore([], hub=hub)
    with pytest.raises(PermissionDenied):
        await next_of(manager_over(store).watch(ACME_READER, tenant="globex"))
    assert len(hub) == 0


async def test_a_watch_that_falls_behind_ends_with_resource_exhausted() -> None:
    hub = ChangeHub(queue_size=2)
    store = FakeStore([], hub=hub)
    stream = manager_over(store).watch(ACME_READER, tenant="")
    assert await next_of(stream) == SnapshotComplete(0)
    for i in range(3):
        hub.publish(change(CREATED, f"sub_{i}", position=i + 1))
    assert sent([await next_of(stream) for _ in range(2)]) == [
        ("created", "sub_0", 1, 1),
        ("created", "sub_1", 1, 2),
    ]
    with pytest.raises(ResourceExhausted):
        await next_of(stream)
    assert len(hub) == 0
