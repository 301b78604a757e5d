"""The activity window: a minute of recorded attempts by second, outcome and tenant, on
fake times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatcher_service.activity import WINDOW_SECONDS, ActivitySecond, ActivityWindow
from dispatcher_service.domain import DeliveryState

# A second's start, so that NOW + fractions stay in the same second.
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
OK, RETRY, DEAD = DeliveryState.SUCCEEDED, DeliveryState.RETRYING, DeliveryState.DEAD


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def counts(entry: ActivitySecond) -> tuple[int, int, int]:
    return entry.succeeded, entry.retrying, entry.dead


def nonzero(
    window: ActivityWindow, tenant: str | None, now: datetime
) -> dict[int, tuple[int, ...]]:
    """The seconds with counts, by how many seconds before `now`'s they start."""
    last = window.seconds(tenant, now)[-1].start_time
    return {
        round((last - entry.start_time).total_seconds()): counts(entry)
        for entry in window.seconds(tenant, now)
        if any(counts(entry))
    }


def test_exactly_a_minute_of_seconds_oldest_first_ending_with_now() -> None:
    window = ActivityWindow()
    seconds = window.seconds(None, at(0.75))
    assert len(seconds) == WINDOW_SECONDS
    assert seconds[-1].start_time == NOW
    assert seconds[0].start_time == NOW - timedelta(seconds=WINDOW_SECONDS - 1)
    starts = [entry.start_time for entry in seconds]
    assert starts == sorted(starts)
    assert all(counts(entry) == (0, 0, 0) for entry in seconds)


def test_counts_land_in_the_second_they_were_recorded_in() -> None:
    window = ActivityWindow()
    window.record("acme", OK, at(0.1))
    window.record("acme", OK, at(0.9))
    window.record("acme", RETRY, at(-0.5))
    window.record("acme", DEAD, at(-3))
    assert nonzero(window, "acme", at(0.95)) == {0: (2, 0, 0), 1: (0, 1, 0), 3: (0, 0, 1)}
    later = nonzero(window, "acme", at(10))
    assert later == {10: (2, 0, 0), 11: (0, 1, 0), 13: (0, 0, 1)}


def test_seconds_older_than_a_minute_fall_out() -> None:
    window = ActivityWindow()
    window.record("acme", OK, at(0))
    window.record("acme", RETRY, at(1))
    assert nonzero(window, "acme", at(WINDOW_SECONDS - 1)) == {59: (1, 0, 0), 58: (0, 1, 0)}
    assert nonzero(window, "acme", at(WINDOW_SECONDS)) == {59: (0, 1, 0)}
    assert nonzero(window, "acme", at(WINDOW_SECONDS + 1)) == {}


def test_a_slot_reused_a_minute_later_starts_from_zero() -> None:
    window = ActivityWindow()
    window.record("acme", OK, at(0))
    window.record("acme", DEAD, at(WINDOW_SECONDS))
    assert nonzero(window, "acme", at(WINDOW_SECONDS)) == {0: (0, 0, 1)}
    window.record("acme", OK, at(5 * WINDOW_SECONDS))
    assert nonzero(window, None, at(5 * WINDOW_SECONDS)) == {0: (1, 0, 0)}


def test_late_records_older_than_the_window_are_ignored() -> None:
    window = ActivityWindow()
    window.record("acme", OK, at(100))
    window.record("acme", RETRY, at(100 - WINDOW_SECONDS))
    window.record("acme", DEAD, at(0))
    assert nonzero(window, None, at(100)) == {0: (1, 0, 0)}
    # Out of order but still within the window: counted where it belongs.
    window.record("acme", RETRY, at(100 - WINDOW_SECONDS + 1))
    assert nonzero(window, None, at(100)) == {0: (1, 0, 0), 59: (0, 1, 0)}


def test_a_query_also_moves_the_window_on() -> None:
    window = ActivityWindow()
    window.seconds(None, at(100))
    window.record("acme", OK, at(100 - WINDOW_SECONDS))
    assert nonzero(window, None, at(100)) == {}


def test_a_tenant_sees_only_its_own_counts() -> None:
    window = ActivityWindow()
    window.record("acme", OK, at(0))
    window.record("globex", RETRY, at(0))
    window.record("globex", RETRY, at(-1))
    assert nonzero(window, "acme", at(0)) == {0: (1, 0, 0)}
    assert nonzero(window, "globex", at(0)) == {0: (0, 1, 0), 1: (0, 1, 0)}
    assert nonzero(window, "initech", at(0)) == {}


def test_no_tenant_sums_every_tenant() -> None:
    window = ActivityWindow()
    for tenant in ("acme", "globex", "initech"):
        window.record(tenant, OK, at(0))
        window.record(tenant, DEAD, at(-2))
    window.record("acme", RETRY, at(0.5))
    assert nonzero(window, None, at(0)) == {0: (3, 1, 0), 2: (0, 0, 3)}


def test_tenants_with_nothing_in_the_window_are_dropped() -> None:
    window = ActivityWindow()
    window.record("acme", OK, at(0))
    window.record("globex", OK, at(30))
    assert window.tenants() == {"acme", "globex"}
    window.seconds(None, at(WINDOW_SECONDS))
    assert window.tenants() == {"globex"}
    window.record("initech", OK, at(30 + WINDOW_SECONDS))
    assert window.tenants() == {"initech"}
