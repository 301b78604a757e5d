"""The claim planner: what each claim looks at and how many it asks for, told plain values
with a fixed clock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher_service.claim_planner import LOOK_BACK, Claim, ClaimPlanner, ClaimResult
from dispatcher_service.domain import ClaimedDelivery

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
EARLIER = NOW - timedelta(minutes=5)
DEAD = frozenset({"dead"})  # the subscription of an endpoint that is full


def delivery(subscription_id: str, *, due: datetime = EARLIER) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=f"{subscription_id}-{due.isoformat()}",
        tenant="acme",
        subscription_id=subscription_id,
        message_id="m-1",
        message_type="event.claim.created.v1",
        url=f"https://{subscription_id}.example/in",
        attempt_count=0,
        payload="{}",
        due_time=due,
    )


def result(
    sent: Sequence[ClaimedDelivery] = (),
    *,
    dead: Sequence[ClaimedDelivery] = (),
    given_back: int = 0,
    queued: int = 0,
    full: frozenset[str] = frozenset(),
) -> ClaimResult:
    return ClaimResult(
        sent=sent, dead=dead, given_back=given_back, queued=queued, full=full, now=NOW
    )


def planner() -> ClaimPlanner:
    """Claims of 4 at most; room for 2 kept for them."""
    return ClaimPlanner(claim_batch=4, max_in_flight=8)


def claim(planner: ClaimPlanner, *, full: frozenset[str] = frozenset()) -> Claim | None:
    return planner.next_claim(free=8, full=full)


def looked_through(*, full: frozenset[str] = DEAD, until: datetime = EARLIER) -> ClaimPlanner:
    """A planner whose last claim skipped `full` and took a whole claim, the last one due
    at `until`."""
    plan = planner()
    first = claim(plan, full=full)
    assert first == Claim(limit=4, skipped=full)
    plan.claimed(first, result([delivery("a", due=until)] * 4, full=full))
    return plan


@pytest.mark.parametrize(
    ("claim_batch", "max_in_flight", "room"),
    [(100, 256, 50), (100, 60, 30), (2, 3, 1), (1, 1, 1)],
)
def test_room_for_half_a_claim_is_waited_for(
    claim_batch: int, max_in_flight: int, room: int
) -> None:
    plan = ClaimPlanner(claim_batch=claim_batch, max_in_flight=max_in_flight)
    assert plan.claim_room == room


def test_a_hand_off_leaves_room_for_a_whole_claim() -> None:
    plan = planner()
    assert plan.hand_off_room(8) == 6
    assert plan.hand_off_room(2) == 0
    assert plan.hand_off_room(1) == -1  # offers nothing


def test_a_claim_asks_for_a_batch_or_the_room_there_is() -> None:
    plan = planner()
    assert plan.next_claim(free=8, full=frozenset()) == Claim(limit=4, skipped=frozenset())
    assert plan.next_claim(free=3, full=frozenset()) == Claim(limit=3, skipped=frozenset())


def test_with_no_endpoint_full_every_claim_looks_through_everything() -> None:
    plan = planner()
    first = claim(plan)
    assert first is not None
    assert plan.claimed(first, result([delivery("a")] * 4)) is False
    assert claim(plan) == Claim(limit=4, skipped=frozenset())


def test_a_short_claim_that_skipped_nothing_found_all_that_is_due() -> None:
    plan = planner()
    first = claim(plan)
    assert first is not None
    assert plan.claimed(first, result([delivery("a")])) is True


def test_a_short_claim_that_skipped_full_endpoints_did_not() -> None:
    plan = planner()
    first = claim(plan, full=DEAD)
    assert first is not None
    assert plan.claimed(first, result([delivery("a")], full=DEAD)) is False


def test_full_endpoints_subscriptions_are_skipped() -> None:
    first = claim(planner(), full=DEAD)
    assert first == Claim(limit=4, skipped=DEAD)
    assert first.excluded == DEAD


def test_after_a_look_through_only_what_became_due_since_is_looked_at() -> None:
    plan = looked_through(until=EARLIER)
    assert claim(plan, full=DEAD) == Claim(limit=4, skipped=DEAD, due_after=EARLIER - LOOK_BACK)


def test_a_short_look_through_leaves_looking_again_to_new_work() -> None:
    plan = planner()
    first = claim(plan, full=DEAD)
    assert first is not None
    plan.claimed(first, result([delivery("a")], full=DEAD))
    assert claim(plan, full=DEAD) is None
    plan.wake()
    assert claim(plan, full=DEAD) == Claim(limit=4, skipped=DEAD, due_after=NOW - LOOK_BACK)
    assert claim(plan, full=DEAD) is None  # the new work is looked at once


def test_a_claim_whose_deliveries_all_went_to_full_endpoints_drains_it_too() -> None:
    plan = planner()
    first = claim(plan, full=DEAD)
    assert first is not None
    full_now = DEAD | {"slow"}
    plan.claimed(first, result([delivery("slow")] * 4, given_back=2, full=full_now))
    assert claim(plan, full=full_now) is None


def test_subscriptions_woken_are_claimed_one_at_a_time_through_their_own_index() -> None:
    plan = looked_through()
    plan.wake(["s2", "s1"])
    first = claim(plan, full=DEAD)
    assert first == Claim(limit=4, skipped=DEAD, only="s1")
    assert first.excluded == frozenset()
    plan.claimed(first, result([delivery("s1")], full=DEAD))  # short: all of s1's
    second = claim(plan, full=DEAD)
    assert second == Claim(limit=4, skipped=DEAD, only="s2")
    plan.claimed(second, result([delivery("s2")] * 4, full=DEAD))  # more may be due
    assert claim(plan, full=DEAD) == Claim(limit=4, skipped=DEAD, only="s2")


def test_woken_subscriptions_of_full_endpoints_wait_for_their_room() -> None:
    plan = looked_through()
    plan.wake(["dead"])
    assert claim(plan, full=DEAD) == Claim(limit=4, skipped=DEAD, due_after=EARLIER - LOOK_BACK)


def test_too_many_woken_subscriptions_are_new_work_of_any_subscription() -> None:
    plan = looked_through(until=EARLIER)
    first = claim(plan, full=DEAD)
    assert first is not None
    plan.claimed(first, result([delivery("a")], full=DEAD))  # short: drained
    plan.wake([f"s{i}" for i in range(10_001)])
    assert claim(plan, full=DEAD) == Claim(limit=4, skipped=DEAD, due_after=NOW - LOOK_BACK)


def test_an_endpoint_with_room_again_has_its_subscriptions_claimed_one_at_a_time() -> None:
    plan = looked_through(full=DEAD | {"d1", "d2"})
    # The endpoint of d1 and d2 has room again; another is still full.
    first = claim(plan, full=DEAD)
    assert first == Claim(limit=4, skipped=DEAD, only="d1")
    plan.claimed(first, result([delivery("d1")], full=DEAD))
    assert claim(plan, full=DEAD) == Claim(limit=4, skipped=DEAD, only="d2")


def test_once_no_endpoint_is_full_everything_is_looked_through_again() -> None:
    plan = looked_through(full=DEAD | {"d1"})
    assert claim(plan) == Claim(limit=4, skipped=frozenset())


def test_subscriptions_given_back_are_not_counted_as_looked_through() -> None:
    plan = planner()
    first = claim(plan, full=DEAD)
    assert first is not None
    # s1's endpoint is full now: what it gave back is due still.
    taken = [delivery("a"), delivery("a"), delivery("s1"), delivery("s1")]
    plan.claimed(first, result(taken, given_back=1, full=DEAD | {"s1"}))
    assert claim(plan, full=DEAD | {"s1"}) == Claim(
        limit=3, skipped=DEAD | {"s1"}, due_after=EARLIER - LOOK_BACK
    )
    # It is claimed once that endpoint has room again.
    assert claim(plan, full=DEAD) == Claim(limit=3, skipped=DEAD, only="s1")


def test_deliveries_taken_dead_count_towards_a_whole_claim() -> None:
    plan = planner()
    first = claim(plan)
    assert first is not None
    assert plan.claimed(first, result([delivery("a")] * 2, dead=[delivery("b")] * 2)) is False


def test_a_poll_or_a_hand_off_given_back_looks_through_everything_again() -> None:
    plan = looked_through()
    plan.look_again()
    assert claim(plan, full=DEAD) == Claim(limit=4, skipped=DEAD)


def test_a_claim_of_one_subscription_after_looking_again_is_taken_in() -> None:
    plan = looked_through()
    plan.wake(["s1"])
    first = claim(plan, full=DEAD)
    assert first == Claim(limit=4, skipped=DEAD, only="s1")
    plan.look_again()  # a hand-off was given back while the claim ran
    plan.claimed(first, result([delivery("s1")], full=DEAD))
    assert claim(plan, full=DEAD) == Claim(limit=4, skipped=DEAD)


def test_a_claim_asks_for_what_fitted_after_deliveries_were_given_back() -> None:
    plan = planner()
    first = claim(plan)
    assert first is not None
    plan.claimed(first, result([delivery("a")] * 4, given_back=3))
    assert claim(plan) == Claim(limit=1, skipped=frozenset())


def test_a_claim_asks_for_one_at_least() -> None:
    plan = planner()
    first = claim(plan)
    assert first is not None
    plan.claimed(first, result([delivery("a")] * 4, given_back=4))
    assert claim(plan) == Claim(limit=1, skipped=frozenset())


def test_a_claim_asks_for_twice_as_many_once_all_started_at_once() -> None:
    plan = planner()
    first = claim(plan)
    assert first is not None
    plan.claimed(first, result([delivery("a")] * 4, given_back=3))
    sizes = []
    for _ in range(3):
        sized = claim(plan)
        assert sized is not None
        sizes.append(sized.limit)
        plan.claimed(sized, result([delivery("a")] * sized.limit))
    assert sizes == [1, 2, 4]
    assert claim(plan) == Claim(limit=4, skipped=frozenset())  # at most a batch


def test_a_claim_asks_for_no_more_while_some_of_the_last_wait_for_a_slot() -> None:
    plan = planner()
    first = claim(plan)
    assert first is not None
    plan.claimed(first, result([delivery("a")] * 4, given_back=2))
    second = claim(plan)
    assert second == Claim(limit=2, skipped=frozenset())
    plan.claimed(second, result([delivery("a")] * 2, queued=1))
    assert claim(plan) == Claim(limit=2, skipped=frozenset())


def test_an_endpoint_with_room_again_is_asked_for_as_many_as_it_has_room() -> None:
    plan = planner()
    first = claim(plan)
    assert first is not None
    plan.claimed(first, result([delivery("a")] * 4, given_back=3))
    plan.endpoint_has_room(3)
    assert claim(plan) == Claim(limit=3, skipped=frozenset())
    plan.endpoint_has_room(16)
    assert claim(plan) == Claim(limit=4, skipped=frozenset())  # at most a batch
    plan.endpoint_has_room(1)
    assert claim(plan) == Claim(limit=4, skipped=frozenset())  # never less
