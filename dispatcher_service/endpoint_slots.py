"""The slots of a delivery worker: how many of its deliveries run at once, to each endpoint
and in all, and which wait for a slot.

`EndpointSlots` is the one owner of that count. A delivery taken runs at once when its
endpoint (scheme://host:port) has a slot free, else waits in the endpoint's queue: at
most `per_endpoint` of them, so none waits longer than one attempt, and not counted as
room taken. An endpoint whose queue is full is full: claims skip its subscriptions until
the queue is half drained, since holding more of their deliveries would take the room of
every other endpoint while a slow or dead one takes its time.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from dispatcher_service.domain import ClaimedDelivery, Target
from dispatcher_service.routing import Route
from dispatcher_service.sending import endpoint_of

__all__ = ["EndpointSlots"]

# URLs whose endpoint is remembered; the table is emptied when full, so it stays bounded.
_MAX_KNOWN_URLS = 10_000


class EndpointSlots:
    """Runs each delivery taken in a task of its own (`run`), as slots allow.

    `on_room(room)` is told when a full endpoint's queue is half drained: its
    subscriptions may be claimed again, as many as `room` (what its queue holds then)."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        per_endpoint: int,
        route: Callable[[str], Route | None],
        run: Callable[[ClaimedDelivery], Coroutine[Any, Any, None]],
        on_room: Callable[[int], None],
    ) -> None:
        self._max_in_flight = max_in_flight
        self._per_endpoint = per_endpoint
        self._route = route
        self._run = run
        self._on_room = on_room
        self._running: set[asyncio.Task[None]] = set()
        self._load: collections.Counter[str] = collections.Counter()
        # Room held for deliveries that ingestion is storing leased to this worker.
        self._held = 0
        self._queued: dict[str, collections.deque[ClaimedDelivery]] = {}
        self._waiting = 0
        # Full endpoints, with the subscriptions seen there.
        self._full: dict[str, set[str]] = {}
        self._endpoints: dict[str, str] = {}
        self._room = asyncio.Event()
        self._room_wanted = 1
        self._closed = False

    @property
    def waiting(self) -> int:
        """Deliveries queued for a slot of their endpoint."""
        return self._waiting

    def free(self) -> int:
        """Deliveries that may start besides those running and the room held."""
        return self._max_in_flight - len(self._running) - self._held

    def full_subscriptions(self) -> frozenset[str]:
        """The subscriptions that claims skip: those seen at full endpoints."""
        return frozenset().union(*self._full.values())

    def startable(self, targets: Sequence[Target], *, room: int) -> dict[str, int]:
        """How many deliveries to `targets` would start at once, by subscription, at most
        `room` of them in all, first come first: none of full endpoints' subscriptions,
        nor beyond the slots their endpoint has free."""
        full = self.full_subscriptions()
        counts: dict[str, int] = {}
        starting: collections.Counter[str] = collections.Counter()
        for target in targets:
            if room <= 0:
                break
            endpoint = self._endpoint_of(target.subscription_id, target.url)
            if (
                target.subscription_id not in full
                and self._load[endpoint] + starting[endpoint] < self._per_endpoint
            ):
                starting[endpoint] += 1
                counts[target.subscription_id] = counts.get(target.subscription_id, 0) + 1
                room -= 1
        return counts

    def hold(self, count: int) -> None:
        """Keeps room for `count` deliveries about to be handed over, until `release`."""
        self._held += count

    def release(self, count: int) -> None:
        """Frees the room `hold` kept for `count` deliveries."""
        self._held -= count
        self._note_room()

    def take(self, delivery: ClaimedDelivery) -> bool:
        """Starts `delivery`, or queues it for a slot of its endpoint; False when that
        queue is full too (the delivery is to be given back)."""
        endpoint = self._endpoint_of(delivery.subscription_id, delivery.url)
        if self._load[endpoint] < self._per_endpoint:
            self._start(delivery, endpoint)
            return True
        queue = self._queued.setdefault(endpoint, collections.deque())
        room = self._per_endpoint - len(queue)
        queued = room > 0 and self._waiting < self._max_in_flight
        if queued:
            queue.append(delivery)
            self._waiting += 1
        if not queued or room == 1:  # full: claim none of it until the queue has drained
            self._full.setdefault(endpoint, set()).add(delivery.subscription_id)
        return queued

    async def wait_for_room(self, room: int) -> None:
        """Returns once `room` deliveries may start (callers look again: a hand-off may
        hold some of it by then), or the slots are closed."""
        if self._closed:
            return
        self._room_wanted = room
        self._room.clear()
        await self._room.wait()

    def close(self) -> None:
        """Starts nothing more: what waits for a slot stays leased until given back, and
        whoever waits for room stops waiting (none is coming for it)."""
        self._closed = True
        self._room.set()

    async def settle(self, grace: float) -> None:
        """Lets the deliveries running finish for `grace` seconds, cancels the rest."""
        if self._running:
            await asyncio.wait(self._running, timeout=grace)
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    def _start(self, delivery: ClaimedDelivery, endpoint: str) -> None:
        self._load[endpoint] += 1
        task = asyncio.create_task(self._run(delivery))
        self._running.add(task)
        task.add_done_callback(functools.partial(self._finished, endpoint))

    def _finished(self, endpoint: str, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._load[endpoint] -= 1
        waiting = self._start_queued(endpoint)
        # Half drained: claim its subscriptions again while the other half keeps the
        # endpoint busy, asking for as many as its queue has room for.
        if waiting <= self._per_endpoint // 2 and endpoint in self._full:
            del self._full[endpoint]
            self._on_room(self._per_endpoint - waiting)
        self._note_room()

    def _start_queued(self, endpoint: str) -> int:
        """Starts the next delivery waiting for `endpoint`, if any; how many still wait."""
        queue = self._queued.get(endpoint)
        if queue and not self._closed:
            self._waiting -= 1
            self._start(queue.popleft(), endpoint)
        if queue:
            return len(queue)
        self._queued.pop(endpoint, None)
        if self._load[endpoint] <= 0:
            del self._load[endpoint]
        return 0

    def _note_room(self) -> None:
        if self.free() >= self._room_wanted:
            self._room.set()

    def _endpoint_of(self, subscription_id: str, stored_url: str) -> str:
        """The endpoint of a delivery: its subscription's URL now, the stored one if the
        subscription is gone."""
        route = self._route(subscription_id)
        url = stored_url if route is None else route.url
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            if len(self._endpoints) >= _MAX_KNOWN_URLS:
                self._endpoints.clear()
            endpoint = self._endpoints[url] = endpoint_of(url)
        return endpoint
