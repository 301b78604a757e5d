"""The endpoint slots: deliveries running at once per endpoint and in all, the queues
waiting for a slot, and full endpoints, with deliveries that run until a test ends them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from dispatcher_service.domain import ClaimedDelivery, Target
from dispatcher_service.endpoint_slots import EndpointSlots
from dispatcher_service.routing import Route
from dispatcher_service.signing import SignatureAlgorithm

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def url(subscription_id: str) -> str:
    """Subscriptions named alike share an endpoint: a1 and a2 post to host a."""
    return f"https://{subscription_id[0]}.example/{subscription_id}"


def delivery(subscription_id: str, number: int = 1) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=f"{subscription_id}-{number}",
        tenant="acme",
        subscription_id=subscription_id,
        message_id=f"m-{number}",
        message_type="event.claim.created.v1",
        url=url(subscription_id),
        attempt_count=0,
        payload="{}",
        due_time=NOW,
    )


class Runs:
    """Deliveries that run until `finish` ends them."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}

    async def __call__(self, delivery: ClaimedDelivery) -> None:
        self.started.append(delivery.id)
        await self._gate(delivery.id).wait()

    async def finish(self, *ids: str) -> None:
        for delivery_id in ids:
            self._gate(delivery_id).set()
        await settled()

    def _gate(self, delivery_id: str) -> asyncio.Event:
        return self._gates.setdefault(delivery_id, asyncio.Event())


async def settled() -> None:
    """Lets tasks started or ended run, and their done callbacks too."""
    for _ in range(5):
        await asyncio.sleep(0)


class Slots:
    """Slots for 4 deliveries at once, 2 per endpoint, with what they were told."""

    def __init__(self) -> None:
        self.runs = Runs()
        self.rooms: list[int] = []
        self.routes: dict[str, Route] = {}
        self.slots = EndpointSlots(
            max_in_flight=4,
            per_endpoint=2,
            route=self.routes.get,
            run=self.runs,
            on_room=self.rooms.append,
        )

    async def take(self, *deliveries: ClaimedDelivery) -> list[bool]:
        taken = [self.slots.take(delivery) for delivery in deliveries]
        await settled()
        return taken


@pytest.fixture
async def slots() -> AsyncIterator[Slots]:
    """Slots whose deliveries still running are ended after the test."""
    made = Slots()
    yield made
    made.slots.close()
    await made.slots.settle(0)


async def test_each_endpoint_runs_per_endpoint_deliveries_at_once_and_queues_the_rest(
    slots: Slots,
) -> None:
    taken = await slots.take(delivery("a1", 1), delivery("a2", 2), delivery("a1", 3))
    assert taken == [True, True, True]
    assert slots.runs.started == ["a1-1", "a2-2"]
    assert slots.slots.waiting == 1
    assert await slots.take(delivery("b1")) == [True]  # another endpoint
    assert slots.runs.started == ["a1-1", "a2-2", "b1-1"]


async def test_deliveries_waiting_for_a_slot_take_no_room(slots: Slots) -> None:
    await slots.take(delivery("a1", 1), delivery("a1", 2), delivery("a1", 3))
    assert slots.slots.free() == 2


async def test_a_slot_freed_starts_the_next_delivery_waiting_for_it(slots: Slots) -> None:
    await slots.take(delivery("a1", 1), delivery("a1", 2), delivery("a1", 3))
    await slots.runs.finish("a1-2")
    assert slots.runs.started == ["a1-1", "a1-2", "a1-3"]
    assert slots.slots.waiting == 0
    assert slots.slots.free() == 2


async def test_an_endpoint_whose_queue_is_full_is_full_and_refuses_more(slots: Slots) -> None:
    await slots.take(delivery("a1", 1), delivery("a1", 2), delivery("a1", 3))
    assert slots.slots.full_subscriptions() == frozenset()
    assert await slots.take(delivery("a2", 4)) == [True]  # fills the queue
    assert slots.slots.full_subscriptions() == {"a2"}
    assert await slots.take(delivery("a1", 5)) == [False]  # to be given back
    assert slots.slots.full_subscriptions() == {"a1", "a2"}


async def test_all_queues_together_hold_max_in_flight_deliveries_at_most(slots: Slots) -> None:
    for host in "abc":
        await slots.take(*(delivery(f"{host}1", n) for n in range(3)))
    assert slots.slots.waiting == 3
    assert await slots.take(delivery("d1", 1), delivery("d1", 2)) == [True, True]
    assert await slots.take(delivery("d1", 3)) == [True]
    assert slots.slots.waiting == 4
    assert await slots.take(delivery("d1", 4)) == [False]
    assert slots.slots.full_subscriptions() == {"d1"}


async def test_a_full_endpoint_half_drained_is_claimed_again_for_the_room_its_queue_has(
    slots: Slots,
) -> None:
    await slots.take(*(delivery("a1", n) for n in range(4)))
    assert slots.slots.full_subscriptions() == {"a1"}
    await slots.runs.finish("a1-0")  # a1-2 starts: one waits still, half of 2
    assert slots.rooms == [1]
    assert slots.slots.full_subscriptions() == frozenset()
    await slots.runs.finish("a1-1")
    assert slots.rooms == [1]  # told once


async def test_room_held_for_a_hand_off_is_taken_until_released(slots: Slots) -> None:
    slots.slots.hold(3)
    assert slots.slots.free() == 1
    slots.slots.release(3)
    assert slots.slots.free() == 4


async def test_waiting_for_room_ends_when_enough_is_free(slots: Slots) -> None:
    await slots.take(delivery("a1", 1), delivery("a1", 2), delivery("b1", 3))
    slots.slots.hold(1)
    waiting = asyncio.create_task(slots.slots.wait_for_room(2))
    await slots.runs.finish("a1-1")
    assert not waiting.done()  # room for 1
    slots.slots.release(1)
    await settled()
    assert waiting.done()


async def test_waiting_for_room_ends_when_the_slots_close(slots: Slots) -> None:
    await slots.take(*(delivery(f"{e}1", n) for n, e in enumerate("abcd")))
    waiting = asyncio.create_task(slots.slots.wait_for_room(2))
    await settled()
    assert not waiting.done()  # all 4 run, none finishes
    slots.slots.close()
    await settled()
    assert waiting.done()


async def test_a_hand_off_takes_what_starts_at_once_first_come_first(slots: Slots) -> None:
    await slots.take(delivery("a1", 1))
    targets = [Target(name, url(name)) for name in ("a1", "a2", "a1", "b1", "b2", "c1")]
    assert slots.slots.startable(targets, room=4) == {"a1": 1, "b1": 1, "b2": 1, "c1": 1}
    assert slots.slots.startable(targets, room=2) == {"a1": 1, "b1": 1}
    assert slots.slots.startable(targets, room=0) == {}


async def test_a_hand_off_takes_none_of_a_full_endpoints_subscriptions(slots: Slots) -> None:
    await slots.take(*(delivery("a1", n) for n in range(4)))
    targets = [Target("a1", url("a1")), Target("b1", url("a1"))]  # b1 now posts to host a
    assert slots.slots.startable(targets, room=4) == {}


async def test_a_delivery_takes_the_slots_of_its_subscriptions_url_now(slots: Slots) -> None:
    moved = Route(
        subscription_id="a1",
        tenant="acme",
        url=url("b1"),
        signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
        secret=None,
        enabled=True,
    )
    slots.routes["a1"] = moved
    await slots.take(delivery("a1", 1), delivery("b1", 2), delivery("a2", 3))
    # a1 posts to host b now; a2 is gone and keeps its stored URL.
    assert slots.runs.started == ["a1-1", "b1-2", "a2-3"]
    assert await slots.take(delivery("b1", 4)) == [True]
    assert slots.slots.waiting == 1


async def test_once_closed_nothing_waiting_starts_and_what_runs_ends_within_the_grace(
    slots: Slots,
) -> None:
    await slots.take(delivery("a1", 1), delivery("a1", 2), delivery("a1", 3))
    slots.slots.close()
    await slots.runs.finish("a1-1")
    assert slots.runs.started == ["a1-1", "a1-2"]
    await slots.slots.settle(0.01)  # a1-2 never finishes: cancelled
    assert slots.slots.free() == 4
    assert slots.slots.waiting == 1  # left for the store's release
