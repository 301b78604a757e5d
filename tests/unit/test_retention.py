"""The rules of retention: what is prunable, the windows, what a run says; and a pruner
that keeps running through database outages."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher_service.domain import DeliveryState
from dispatcher_service.pruner import Pruner
from dispatcher_service.pruning import EventPruner
from dispatcher_service.retention import (
    Pace,
    PrunedRows,
    RetentionPolicy,
    expunged_events_message,
    expunged_message,
    prunable,
    run_summary,
)
from service_common.errors import StoreUnavailable

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=1)
SUCCEEDED, DEAD = DeliveryState.SUCCEEDED, DeliveryState.DEAD


@pytest.mark.parametrize(
    ("created", "deliveries", "expected"),
    [
        (OLD, [(SUCCEEDED, OLD), (DEAD, OLD)], True),
        (OLD, [], True),  # nobody was subscribed
        (OLD, [(SUCCEEDED, OLD), (DeliveryState.RETRYING, OLD)], False),
        (OLD, [(DeliveryState.PENDING, OLD)], False),
        (OLD, [(SUCCEEDED, RECENT)], False),  # redelivered lately
        (OLD, [(SUCCEEDED, CUTOFF)], False),  # the cutoff itself is inside the window
        (RECENT, [(SUCCEEDED, OLD)], False),
        (CUTOFF, [], False),
    ],
    ids=[
        "finished",
        "no-deliveries",
        "one-due",
        "pending",
        "redelivered",
        "at-cutoff",
        "new",
        "created-at-cutoff",
    ],
)
def test_an_event_is_prunable_once_old_and_finished_for_the_whole_window(
    created: datetime, deliveries: list[tuple[DeliveryState, datetime]], expected: bool
) -> None:
    assert prunable(created, deliveries, cutoff=CUTOFF) is expected


def test_the_windows_of_a_policy() -> None:
    policy = RetentionPolicy(days=30, payload_days=7.5)
    assert policy.prune_cutoff(NOW) == CUTOFF
    assert policy.expunge_cutoff(NOW) == NOW - timedelta(days=7, hours=12)
    keep_all = RetentionPolicy(days=0)
    assert (keep_all.active, keep_all.prune_cutoff(NOW), keep_all.expunge_cutoff(NOW)) == (
        False,
        None,
        None,
    )
    assert RetentionPolicy(days=0, payload_days=1).active


def test_pruned_rows_add_up_by_table() -> None:
    total = PrunedRows(1, 2, 3) + PrunedRows(events=4)
    assert total.by_table() == {"events": 5, "deliveries": 2, "attempts": 3}


def test_what_a_run_and_a_refused_redelivery_say() -> None:
    assert (
        run_summary(PrunedRows(3, 5, 8), 2, policy=RetentionPolicy(30, 7), seconds=1.23)
        == "pruned 3 events, 5 deliveries, 8 attempts older than 30 days; "
        "expunged 2 payloads older than 7 days in 1.2 s"
    )
    assert (
        run_summary(PrunedRows(), 0, policy=RetentionPolicy(30), seconds=0.01)
        == "pruned 0 events, 0 deliveries, 0 attempts older than 30 days in 0.0 s"
    )
    assert expunged_message("m-1", NOW) == (
        "the payload of event m-1 was expunged on 2026-06-01 "
        "(DISPATCHER_PAYLOAD_RETENTION_DAYS); it cannot be delivered again"
    )
    assert expunged_events_message(3, NOW).startswith(
        "the payloads of the 3 events asked for were expunged, the last on 2026-06-01"
    )


class Unreachable(EventPruner):
    """A database that is away until `back` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.back = False

    def try_lock(self) -> None:
        self.calls += 1
        if not self.back:
            raise StoreUnavailable("the database is unavailable")


async def test_an_outage_is_told_once_and_each_interval_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = Unreachable()
    pruner = Pruner(pruner=database, policy=RetentionPolicy(30), interval=0.01, batch_size=10)
    caplog.set_level(logging.DEBUG)
    pruner.start()
    try:
        while database.calls < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        database.back = True
        calls = database.calls
        while database.calls < calls + 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    finally:
        await pruner.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "database unavailable while pruning old events; retrying with backoff until it is back"
    ]
    assert any(r.getMessage().startswith("database available again") for r in caplog.records)
    assert any("another replica is pruning" in r.getMessage() for r in caplog.records)


def test_the_pace_sizes_batches_to_their_target_time_within_bounds() -> None:
    pace = Pace(batch_seconds=0.01, share=0.5, min_size=10)
    assert pace.next_size(100, 0.02, largest=1000) == 50  # twice too slow: half
    assert pace.next_size(100, 0.005, largest=1000) == 200  # twice too fast: double
    assert pace.next_size(100, 0.0001, largest=1000) == 200  # never more than double
    assert pace.next_size(100, 0.0, largest=1000) == 200
    assert pace.next_size(800, 0.001, largest=1000) == 1000  # never past the setting
    assert pace.next_size(100, 10.0, largest=1000) == 10  # never below the floor
    assert pace.next_size(100, 10.0, largest=5) == 5  # but never past the setting either


def test_the_pause_leaves_the_database_to_others_for_the_rest_of_the_time() -> None:
    assert Pace(share=0.5).pause(0.01) == pytest.approx(0.01)
    assert Pace(share=0.25).pause(0.01) == pytest.approx(0.03)
    assert Pace(share=1.0).pause(0.01) == 0
