"""The rules of the change log and feed: when a watch can resume, how the feed backs off,
and how it carries on through a database outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import cast

import pytest
from pydantic import ValidationError

from service_common.errors import StoreUnavailable
from subscription_service.change_feed import MAX_RETRY_SECONDS, ChangeFeed, retry_delay
from subscription_service.change_log import ChangeLog, LogBounds, can_resume
from subscription_service.domain import Change, ChangeType
from subscription_service.settings import SubscriptionSettings
from subscription_service.watch import ChangeHub
from tests.unit.test_watch import subscription

WAIT_SECONDS = 5

# can_resume


def test_a_watch_resumes_anywhere_from_just_before_the_oldest_kept_to_the_newest() -> None:
    log = LogBounds(oldest=10, newest=20)

    assert [p for p in range(25) if can_resume(p, log, limit=100)] == list(range(9, 21))


def test_a_watch_never_resumes_after_zero_or_on_an_empty_log() -> None:
    assert not can_resume(0, LogBounds(oldest=1, newest=5), limit=100)
    assert not can_resume(3, LogBounds(oldest=None, newest=None), limit=100)


def test_a_watch_further_behind_than_the_limit_gets_a_snapshot() -> None:
    log = LogBounds(oldest=1, newest=1000)

    assert can_resume(900, log, limit=100)
    assert not can_resume(899, log, limit=100)


def test_a_log_pruned_to_its_newest_row_serves_that_row_and_the_one_before() -> None:
    log = LogBounds(oldest=42, newest=42)

    assert [p for p in range(1, 50) if can_resume(p, log, limit=100)] == [41, 42]


# retry_delay


def test_the_feed_polls_at_its_interval_and_backs_off_while_reads_fail() -> None:
    delays = [retry_delay(0.25, failures=n) for n in range(7)]

    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, MAX_RETRY_SECONDS, MAX_RETRY_SECONDS]
    assert retry_delay(0.25, failures=10_000) == MAX_RETRY_SECONDS


def test_a_poll_interval_longer_than_the_backoff_cap_is_kept() -> None:
    assert retry_delay(30.0, failures=3) == 30.0


@pytest.mark.parametrize(
    "name", ["SUBSCRIPTIONS_CHANGE_POLL_SECONDS", "SUBSCRIPTIONS_CHANGE_LOG_RETENTION_HOURS"]
)
def test_the_change_log_settings_must_be_positive(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SubscriptionSettings().change_poll_seconds == 0.25
    assert SubscriptionSettings().change_log_retention_hours == 168
    monkeypatch.setenv(name, "0")
    with pytest.raises(ValidationError):
        SubscriptionSettings()


# The feed over a log that fails on demand


class FlakyLog:
    """A change log in memory whose reads fail while `down`."""

    def __init__(self, newest: int = 0) -> None:
        self.rows: list[Change] = []
        self.start = newest
        self.down = False
        self.reads = 0

    def add(self, position: int) -> None:
        self.rows.append(Change(ChangeType.CREATED, subscription(f"sub_{position}"), position))

    def newest(self) -> int:
        self._read()
        return self.rows[-1].position if self.rows else self.start

    def after(self, position: int, *, limit: int) -> list[Change]:
        self._read()
        return [row for row in self.rows if row.position > position][:limit]

    def prune(self, *, before: object) -> int:
        self._read()
        return 0

    def _read(self) -> None:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("the database is unavailable")


async def until(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_feed_starts_at_the_newest_change_and_publishes_later_ones_in_order() -> None:
    changes = FlakyLog(newest=7)
    hub = ChangeHub(queue_size=100)
    feed = ChangeFeed(
        cast(ChangeLog, changes), hub, poll_seconds=0.01, retention=timedelta(hours=1)
    )
    seen: list[int] = []
    async with feed.watch() as watcher:
        assert feed.position == 7
        feed.start()
        consumer = asyncio.create_task(_positions(watcher.changes(), seen))
        for position in (8, 9, 12):
            changes.add(position)
        feed.wake()
        await until(lambda: len(seen) >= 3)
        await feed.stop()
        hub.close()
        await consumer
    assert seen == [8, 9, 12]


async def test_an_outage_is_warned_of_once_and_the_feed_carries_on_from_where_it_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    changes = FlakyLog()
    changes.add(1)
    hub = ChangeHub(queue_size=100)
    feed = ChangeFeed(
        cast(ChangeLog, changes), hub, poll_seconds=0.01, retention=timedelta(hours=1)
    )
    seen: list[int] = []
    with caplog.at_level(logging.INFO, logger="subscription_service.change_feed"):
        async with feed.watch() as watcher:
            feed.start()
            consumer = asyncio.create_task(_positions(watcher.changes(), seen))
            changes.down = True
            reads = changes.reads
            await until(lambda: changes.reads >= reads + 4)
            changes.add(2)
            changes.add(3)
            changes.down = False
            await until(lambda: len(seen) >= 2)
            await feed.stop()
            hub.close()
            await consumer
    assert seen == [2, 3]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot read the change log" in warnings[0].getMessage()
    assert "reading the change log again" in caplog.text


async def test_a_watch_before_the_feed_has_a_position_fails_while_the_database_is_away() -> None:
    changes = FlakyLog()
    changes.down = True
    hub = ChangeHub(queue_size=100)
    feed = ChangeFeed(
        cast(ChangeLog, changes), hub, poll_seconds=0.01, retention=timedelta(hours=1)
    )
    with pytest.raises(StoreUnavailable):
        async with feed.watch():
            pass
    assert len(hub) == 0
    changes.down = False
    async with feed.watch():
        assert feed.position == 0


async def _positions(stream: AsyncIterator[Change], into: list[int]) -> None:
    async for change in stream:
        into.append(change.position)
