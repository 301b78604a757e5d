"""The rows of an ingested batch: time-ordered ids, deliveries leased as a hand-off asks,
and what each event of the batch came to."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher_service import ingest_rows
from dispatcher_service.domain import HandOff, PreparedEvent, Target
from dispatcher_service.ingest_rows import delivery_rows, new_ids, outcomes

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def event(message_id: str, *subscriptions: str) -> PreparedEvent:
    return PreparedEvent(
        tenant="acme",
        message_id=message_id,
        message_type="event.claim.created.v1",
        payload="{}",
        targets=tuple(Target(s, f"https://{s}.example.com/in") for s in subscriptions),
    )


def test_new_ids_are_unique_and_sort_in_the_order_they_were_made() -> None:
    first, second = new_ids("dlv", 500), new_ids("dlv", 500)
    assert len(set(first + second)) == 1000
    assert all(len(i) == len("dlv_") + 32 for i in first)
    assert max(first)[:16] <= min(second)[:16]


def test_ids_made_in_the_same_millisecond_sort_in_the_order_they_were_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)
    made = [new_ids("dlv", 3) for _ in range(20)]
    flat = [i for batch in made for i in batch]
    assert flat == sorted(flat)
    assert len(set(flat)) == 60


def test_a_hand_off_leases_the_first_deliveries_of_each_subscription_it_counts() -> None:
    hand_off = HandOff(owner="w1", lease_expires=NOW + timedelta(seconds=30), counts={"a": 1})
    new = delivery_rows(
        [("evt_1", event("m1", "a", "b")), ("evt_2", event("m2", "a"))], now=NOW, hand_off=hand_off
    )
    assert [(r["event_id"], r["subscription_id"], r["leased"]) for r in new.rows] == [
        ("evt_1", "a", True),
        ("evt_1", "b", False),
        ("evt_2", "a", False),
    ]
    assert [(d.id, d.attempt_count, d.due_time) for d in new.handed_off] == [
        (new.rows[0]["id"], 0, NOW)
    ]
    assert new.due == {"a", "b"}


def test_without_a_hand_off_every_delivery_is_due() -> None:
    new = delivery_rows([("evt_1", event("m1", "a", "b"))], now=NOW, hand_off=None)
    assert not any(row["leased"] for row in new.rows)
    assert new.handed_off == []
    assert new.due == {"a", "b"}


def test_only_the_first_of_equal_message_ids_is_stored() -> None:
    first, again, other = event("m1", "a", "b"), event("m1", "a", "b"), event("m2", "a")
    first_of = ingest_rows.first_of([first, again, other])
    assert first_of == {("acme", "m1"): first, ("acme", "m2"): other}
    assert first_of[("acme", "m1")] is first
    found = outcomes([first, again, other], first_of, inserted={("acme", "m1")})
    assert [(o.message_id, o.duplicate, o.deliveries) for o in found] == [
        ("m1", False, 2),
        ("m1", True, 0),
        ("m2", True, 0),
    ]
