"""Delivery workers: claim due deliveries, sign and POST them, record every attempt.

One `DeliveryWorker` per process runs many deliveries at once (bounded overall; the
HTTP sender bounds each endpoint). Signing is `DeliverySigner`'s job, recording the
results (in small batches) `AttemptRecorder`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from dispatcher_service.delivery_signer import DeliverySigner, Signer, build_body
from dispatcher_service.domain import (
    INTERRUPTED_ERROR,
    Attempt,
    ClaimedBatch,
    ClaimedDelivery,
    Completion,
    DeliveryState,
    HandOff,
    Target,
)
from dispatcher_service.http_sender import endpoint_of
from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.outage import Outage, store_call
from dispatcher_service.recorder import AttemptRecorder, Disabler
from dispatcher_service.retry import (
    AttemptOutcome,
    DisablePolicy,
    RetrySchedule,
    classify,
    next_attempt_delay,
    parse_retry_after,
)
from dispatcher_service.routing import Route
from dispatcher_service.store import DeliveryStore
from service_common.errors import StoreUnavailable
from service_common.logs import bind_log_context, log_context
from service_common.tracing import tracing_enabled

# `Disabler` and `build_body` live with the recorder and the signer; named here for the
# callers that import them from the worker.
__all__ = ["DeliveryWorker", "Disabler", "WorkerLimits", "build_body"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_MAX_KNOWN_URLS = 10_000
# Subscriptions named by `wake` and not claimed yet; beyond this, any new work is assumed.
_MAX_WOKEN = 10_000
# How often a worker whose busy endpoints hold all that is due looks through everything
# due for other work (in between, new deliveries are looked at alone).
_SATURATED_POLL = 0.5
# How far back such a look at new deliveries reaches before the last one: an ingestion
# takes its time before its transaction commits, so its deliveries may show up that late.
_LOOK_BACK = timedelta(seconds=0.25)

# While the database is away the claim loop waits twice as long after each failed claim,
# from the poll interval up to this; an ingestion that commits (so the database is back)
# ends the wait at once.
MAX_CLAIM_BACKOFF_SECONDS = 10.0


class RouteLookup(Protocol):
    def is_ready(self) -> bool: ...

    def route(self, subscription_id: str) -> Route | None: ...


class _SendResult(Protocol):
    @property
    def status_code(self) -> int | None: ...
    @property
    def latency(self) -> float: ...
    @property
    def error(self) -> str | None: ...
    @property
    def response_snippet(self) -> str: ...
    @property
    def retry_after(self) -> str | None: ...


class Sender(Protocol):
    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> _SendResult: ...


@dataclass(frozen=True, kw_only=True)
class WorkerLimits:
    max_in_flight: int = 256
    # Deliveries sent at once to one endpoint (scheme://host:port).
    per_endpoint: int = 16
    claim_batch: int = 100
    lease: timedelta = timedelta(seconds=60)
    poll_interval: float = 0.5
    # Results wait this long at most to be recorded together, unless `flush_batch` of
    # them wait already: the delivery log may lag behind the receivers by this much.
    flush_interval: float = 0.25
    flush_batch: int = 200


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _LookedThrough:
    """What the claims since the last look through everything have found: every delivery
    due by `until` outside `besides` was then claimed or not due. `drained`: the last one
    came back short, or all it took went to endpoints now full, so looking again is left
    to new work.

    While that holds, a claim need not walk past the skipped subscriptions' backlog again
    (a dead endpoint may have many thousands of due deliveries): it looks at what became
    due after `until`, or at one subscription through its own index."""

    besides: frozenset[str]
    until: datetime
    drained: bool


class DeliveryWorker:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        routes: RouteLookup,
        sender: Sender,
        signer: Signer,
        disable: Disabler,
        schedule: RetrySchedule,
        disable_policy: DisablePolicy | None,
        limits: WorkerLimits = WorkerLimits(),
        user_agent: str,
        clock: Callable[[], datetime] = _utc_now,
        rng: Callable[[], float] = random.random,
        metrics: DispatcherMetrics | None = None,
    ) -> None:
        self._metrics = metrics or DispatcherMetrics()
        self._store = store
        self._routes = routes
        self._sender = sender
        self._schedule = schedule
        self._limits = limits
        self._clock = clock
        self._rng = rng
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        # One for the claim loop and the recorder both: one warning per outage.
        self._outage = Outage()
        self._signing = DeliverySigner(signer=signer, user_agent=user_agent, route=routes.route)
        self._recorder = AttemptRecorder(
            store=store,
            owner=self.owner,
            route=routes.route,
            disable=disable,
            disable_policy=disable_policy,
            flush_interval=limits.flush_interval,
            flush_batch=limits.flush_batch,
            clock=clock,
            metrics=self._metrics,
            outage=self._outage,
        )
        self._wake = asyncio.Event()
        # Claim in batches: waiting until a good share of the slots is free costs the
        # receivers nothing and saves a query per finished delivery.
        self._claim_room = max(1, min(limits.claim_batch, limits.max_in_flight) // 2)
        self._room = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        # Room held for deliveries that ingestion is storing leased to this worker.
        self._offered = 0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._endpoint_load: collections.Counter[str] = collections.Counter()
        # Claimed deliveries waiting for a slot of their endpoint: at most `per_endpoint`
        # each, so none waits longer than one attempt, and not counted as room taken.
        self._queued: dict[str, collections.deque[ClaimedDelivery]] = {}
        self._queued_total = 0
        # Endpoints whose queue is full, with the subscriptions seen there. Claims skip
        # those subscriptions until the queue has drained: holding more of their
        # deliveries would take the room of every other endpoint while a slow or dead
        # one takes its time.
        self._saturated: dict[str, set[str]] = {}
        self._endpoints: dict[str, str] = {}
        # How many deliveries a claim asks for: less after deliveries had to be given back
        # (one busy endpoint holds most of what is due), more again once claims fit.
        self._claim_size = limits.claim_batch
        # A claim that skips the subscriptions of full endpoints reads past every due
        # delivery of theirs, and a dead endpoint's backlog may be huge. So while some
        # endpoint is full, what was looked through is remembered, and the subscriptions
        # that ingestion names (`wake`) and those of an endpoint with room again are
        # claimed through their own index; other new work (a redelivery) by a look at
        # what became due since. A poll looks through everything again.
        self._looked: _LookedThrough | None = None
        self._new_work = False
        self._woken: set[str] = set()

    def wake(self, subscription_ids: Collection[str] = ()) -> None:
        """Tells the worker that new deliveries are due: for `subscription_ids` (after an
        ingestion), or for any subscription (none given)."""
        if subscription_ids and len(self._woken) + len(subscription_ids) <= _MAX_WOKEN:
            self._woken.update(subscription_ids)
        else:
            self._new_work = True
        self._wake.set()

    def offer(self, targets: Sequence[Target]) -> HandOff | None:
        """What this worker takes of the new deliveries to `targets` that ingestion is about
        to store: leased to it in the ingestion's own transaction, so that no claim has to
        find them. As many as start at once, while room for a whole claim stays free for
        what else is due (retries, redeliveries, what other replicas left), which is thus
        never starved. None: none now. The room stays held until `accept` or `withdraw`."""
        if not self._tasks or self._stopping or not self._routes.is_ready():
            return None
        room = self._free() - self._claim_room
        excluded = frozenset().union(*self._saturated.values())
        counts: dict[str, int] = {}
        starting: collections.Counter[str] = collections.Counter()
        for target in targets:
            if room <= 0:
                break
            endpoint = self._endpoint_of(target.subscription_id, target.url)
            if (
                target.subscription_id not in excluded
                and self._endpoint_load[endpoint] + starting[endpoint] < self._limits.per_endpoint
            ):
                starting[endpoint] += 1
                counts[target.subscription_id] = counts.get(target.subscription_id, 0) + 1
                room -= 1
        if not counts:
            return None
        offer = HandOff(
            owner=self.owner, lease_expires=self._clock() + self._limits.lease, counts=counts
        )
        self._offered += offer.total
        return offer

    async def accept(self, offer: HandOff, deliveries: list[ClaimedDelivery]) -> None:
        """Sends `deliveries`, stored leased to this worker as `offer` asked."""
        self.withdraw(offer)
        if self._stopping:  # stored while this worker stops: for others to claim
            await self._unclaim([delivery.id for delivery in deliveries])
            return
        busy = self._begin(deliveries, now=self._clock())
        if busy:
            # Claims took the room meanwhile. What is given back is due again: the next
            # claim looks through everything.
            self._looked = None
            await self._unclaim(busy)

    def withdraw(self, offer: HandOff) -> None:
        """Frees the room held for `offer` (its deliveries are started, or not stored)."""
        self._offered -= offer.total
        self._note_room()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="claim deliveries"),
            asyncio.create_task(self._recorder.run(), name="record attempts"),
        ]

    async def stop(self, grace: float) -> None:
        """Stops claiming, lets deliveries in flight finish for `grace` seconds, records them."""
        self._stopping = True
        self._wake.set()
        if not self._tasks:
            return
        claim_loop, flush_loop = self._tasks
        await claim_loop
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=grace)
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        flush_loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flush_loop
        # Bounded: with the database away, shutting down must not wait for it forever.
        await self._recorder.flush_all(give_up_at=time.monotonic() + max(grace, 1.0))
        with contextlib.suppress(StoreUnavailable):
            await store_call(self._store, self._store.release, owner=self.owner)

    async def _claim_loop(self) -> None:
        backoff = self._limits.poll_interval
        while not self._stopping:
            if not self._routes.is_ready():
                # Until the first routing table arrives every subscription looks deleted;
                # claiming now would kill deliveries that are merely early. The first
                # ingestion (which waits for the table too) or a poll ends the wait.
                await self._idle()
                continue
            free = self._free()
            if free < self._claim_room:
                self._room.clear()
                await self._room.wait()
                continue
            want = min(free, self._claim_size)
            excluded = frozenset().union(*self._saturated.values())
            looked = self._looked if excluded else None
            scope = self._scope(looked, excluded)
            if scope is None:
                if not await self._idle(max(self._limits.poll_interval, _SATURATED_POLL)):
                    # Polled: look through everything again, for what other replicas gave
                    # back and leases that ran out.
                    self._looked = None
                continue
            due_after, only = scope
            now = self._clock()
            try:
                batch = await store_call(
                    self._store,
                    self._store.claim,
                    owner=self.owner,
                    limit=want,
                    now=now,
                    lease=self._limits.lease,
                    max_attempts=self._schedule.max_attempts,
                    excluded=excluded if only is None else (),
                    due_after=due_after,
                    only=only,
                )
            except Exception as error:
                if isinstance(error, StoreUnavailable):
                    self._outage.failed("claiming deliveries")
                else:
                    # Not a reason to stop claiming: a dead loop would deliver nothing more.
                    log.exception("claiming deliveries failed unexpectedly")
                log.debug("claiming again in %.2fs", backoff)
                await self._idle(backoff)
                backoff = min(
                    backoff * 2, max(MAX_CLAIM_BACKOFF_SECONDS, self._limits.poll_interval)
                )
                continue
            backoff = self._limits.poll_interval
            self._outage.ended()
            claimed = batch.deliveries
            if batch.interrupted or batch.dead:
                self._note_interrupted(batch)
            queued = self._queued_total
            busy = self._begin(claimed, now=now)
            if busy:
                self._claim_size = max(1, len(claimed) - len(busy))
                await self._unclaim(busy)
            elif len(claimed) == want and self._queued_total == queued:
                # Everything started at once: ask for more next time.
                self._claim_size = min(self._limits.claim_batch, 2 * self._claim_size)
            taken = [*claimed, *batch.dead] if batch.dead else claimed
            short = len(taken) < want
            self._remember(taken, short=short, now=now, excluded=excluded, only=only)
            if short and not excluded:
                await self._idle()

    def _begin(self, claimed: list[ClaimedDelivery], *, now: datetime) -> list[str]:
        """Starts sending what this worker holds in `claimed`, or queues it for its
        endpoint; returns the ids of those to give back (their endpoints are full)."""
        busy = [delivery.id for delivery in claimed if not self._take(delivery)]
        # Before the tasks just started get to run.
        self._signing.sign_ahead(claimed, besides=frozenset(busy), now=now)
        return busy

    def _free(self) -> int:
        """Deliveries this worker may start besides those in flight and offered."""
        return self._limits.max_in_flight - len(self._in_flight) - self._offered

    def _note_room(self) -> None:
        if self._free() >= self._claim_room:
            self._room.set()

    def _note_interrupted(self, batch: ClaimedBatch) -> None:
        """Logs and counts the attempts that `batch`'s claim found cut short (their
        dispatcher was killed, or stalled past its lease) and recorded as interrupted."""
        for state, deliveries in (
            (DeliveryState.RETRYING, batch.interrupted),
            (DeliveryState.DEAD, batch.dead),
        ):
            for delivery in deliveries:
                self._recorder.count(state)
                with log_context(
                    delivery_id=delivery.id,
                    message_id=delivery.message_id,
                    subscription_id=delivery.subscription_id,
                ):
                    log.log(
                        logging.WARNING if state is DeliveryState.DEAD else logging.INFO,
                        "attempt %d: %s; delivery %s",
                        delivery.attempt_count,
                        INTERRUPTED_ERROR,
                        "dead" if state is DeliveryState.DEAD else "sent again now",
                    )

    def _scope(
        self, looked: _LookedThrough | None, excluded: frozenset[str]
    ) -> tuple[datetime | None, str | None] | None:
        """What the next claim looks at: deliveries due after a time, or those of one
        subscription, or (None, None) everything but `excluded`; None: nothing to look at
        until new work, an endpoint with room or a poll."""
        if looked is None:
            self._new_work = False
            return None, None
        # Those of full endpoints are claimed once these have room again.
        self._woken -= excluded
        freed = looked.besides - excluded
        if freed:
            return None, min(freed)  # its endpoint has room again
        if self._woken:
            return None, min(self._woken)
        if looked.drained and not self._new_work:
            return None
        self._new_work = False
        return looked.until - _LOOK_BACK, None

    def _remember(
        self,
        claimed: list[ClaimedDelivery],
        *,
        short: bool,
        now: datetime,
        excluded: frozenset[str],
        only: str | None,
    ) -> None:
        """Records what a claim looked through (see `_LookedThrough`)."""
        # What was given back just now stays due: its subscriptions (their endpoints are
        # full now) must not count as looked through.
        full_now = frozenset().union(*self._saturated.values())
        if only is not None:
            looked = self._looked
            assert looked is not None
            # Short: all of its due deliveries are taken, it is looked through too.
            besides = looked.besides - {only} if short else looked.besides
            self._looked = replace(looked, besides=besides | full_now)
            if short:
                self._woken.discard(only)
            return
        # Oldest due first: everything outside `excluded` due before the last one claimed
        # was claimed too. When all it claimed went to endpoints now full, what else is due
        # is left to new events, endpoints with room and polls: looking again would walk
        # past their backlog for little.
        until = now if short else max(delivery.due_time for delivery in claimed)
        drained = short or {d.subscription_id for d in claimed} <= full_now
        self._looked = _LookedThrough(besides=excluded | full_now, until=until, drained=drained)
        if short:
            self._woken.clear()

    def _take(self, delivery: ClaimedDelivery) -> bool:
        """Starts sending `delivery`, or queues it for a slot of its endpoint; False when
        that queue is full too (the delivery is to be given back)."""
        endpoint = self._endpoint_of(delivery.subscription_id, delivery.url)
        if self._endpoint_load[endpoint] < self._limits.per_endpoint:
            self._start(delivery, endpoint)
            return True
        queue = self._queued.setdefault(endpoint, collections.deque())
        room = self._limits.per_endpoint - len(queue)
        queued = room > 0 and self._queued_total < self._limits.max_in_flight
        if queued:
            queue.append(delivery)
            self._queued_total += 1
        if not queued or room == 1:  # full: claim none of it until the queue has drained
            self._saturated.setdefault(endpoint, set()).add(delivery.subscription_id)
        return queued

    def _start(self, delivery: ClaimedDelivery, endpoint: str) -> None:
        self._endpoint_load[endpoint] += 1
        task = asyncio.create_task(self._deliver(delivery))
        self._in_flight.add(task)
        task.add_done_callback(functools.partial(self._finished, endpoint))

    def _endpoint_of(self, subscription_id: str, stored_url: str) -> str:
        route = self._routes.route(subscription_id)
        url = stored_url if route is None else route.url
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            if len(self._endpoints) >= _MAX_KNOWN_URLS:
                self._endpoints.clear()
            endpoint = self._endpoints[url] = endpoint_of(url)
        return endpoint

    async def _unclaim(self, ids: list[str]) -> None:
        """Gives back deliveries whose endpoint is busy, without an attempt: they stay due,
        for this worker once a slot frees or for another replica now."""
        try:
            await store_call(self._store, self._store.unclaim, ids=ids, owner=self.owner)
        except StoreUnavailable:
            self._outage.failed("giving back deliveries")  # their leases expire instead

    def _finished(self, endpoint: str, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._endpoint_load[endpoint] -= 1
        queue = self._queued.get(endpoint)
        if queue and not self._stopping:  # on stop, `release` gives the queued back
            self._queued_total -= 1
            self._start(queue.popleft(), endpoint)
        if not queue:
            self._queued.pop(endpoint, None)
            if self._endpoint_load[endpoint] <= 0:
                del self._endpoint_load[endpoint]
        waiting = len(queue) if queue else 0
        # Half drained: claim its subscriptions again while the other half keeps the
        # endpoint busy, asking for as many as its queue has room for.
        if waiting <= self._limits.per_endpoint // 2 and endpoint in self._saturated:
            del self._saturated[endpoint]
            room = self._limits.per_endpoint - waiting
            self._claim_size = max(self._claim_size, min(room, self._limits.claim_batch))
            self._wake.set()
        self._note_room()

    async def _idle(self, seconds: float | None = None) -> bool:
        """Waits for `wake` (or `stop`), at most `seconds` (the poll interval by default);
        False when the time ran out."""
        woken = True
        try:
            await asyncio.wait_for(
                self._wake.wait(),
                timeout=self._limits.poll_interval if seconds is None else seconds,
            )
        except TimeoutError:
            woken = False
        self._wake.clear()
        return woken

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        # Each delivery runs in a task of its own: what is bound here stays with it.
        bind_log_context(
            delivery_id=delivery.id,
            message_id=delivery.message_id,
            subscription_id=delivery.subscription_id,
        )
        with self._span(delivery) as span:
            try:
                completion = await self._attempt(delivery)
            except Exception:
                # A bug must not lose the delivery: its lease expires and it is tried again.
                log.exception("delivery failed unexpectedly")
                return
            attempt = completion.attempt
            if span is not None:
                span.set_attribute("http.response.status_code", attempt.status_code)
                span.set_attribute("webhooks.outcome", completion.state.value)
            if completion.state is not DeliveryState.SUCCEEDED:
                log.log(
                    logging.WARNING if completion.state is DeliveryState.DEAD else logging.INFO,
                    "attempt %d: %s; delivery %s%s",
                    attempt.number,
                    attempt.error or f"HTTP {attempt.status_code}",
                    completion.state.value,
                    ""
                    if completion.next_attempt_time is None
                    else f", next attempt at {completion.next_attempt_time.isoformat()}",
                )
        self._recorder.put(completion)

    def _span(self, delivery: ClaimedDelivery) -> contextlib.AbstractContextManager[Span | None]:
        if not tracing_enabled():
            return contextlib.nullcontext()
        return _tracer.start_as_current_span(
            "deliver webhook",
            kind=SpanKind.CLIENT,
            attributes={
                "webhooks.delivery_id": delivery.id,
                "webhooks.message_id": delivery.message_id,
                "webhooks.subscription_id": delivery.subscription_id,
                "webhooks.attempt": delivery.attempt_count + 1,
            },
        )

    async def _attempt(self, delivery: ClaimedDelivery) -> Completion:
        number = delivery.attempt_count + 1
        started = self._clock()
        route = self._routes.route(delivery.subscription_id)
        if route is None or not route.enabled:
            reason = "subscription deleted" if route is None else "subscription disabled"
            return self._completion(
                delivery,
                number,
                started,
                status=0,
                latency=0.0,
                error=reason,
                snippet="",
                state=DeliveryState.DEAD,
                next_time=None,
                endpoint_failed=None,
            )
        body, headers = await self._signing.signed(delivery, route, started)
        result = await self._sender.send(route.url, body=body, headers=headers)
        self._metrics.attempt(result.status_code, result.latency)
        outcome = classify(result.status_code, result.error)
        state, next_time = self._next_state(outcome, number, result.retry_after)
        if outcome is AttemptOutcome.DISABLE:
            await self._recorder.disable_quietly(
                delivery.subscription_id, "the endpoint answered 410 Gone", kind="gone"
            )
        return self._completion(
            delivery,
            number,
            started,
            status=result.status_code or 0,
            latency=result.latency,
            error=result.error or "",
            snippet=result.response_snippet,
            state=state,
            next_time=next_time,
            endpoint_failed=outcome is not AttemptOutcome.SUCCESS,
        )

    def _next_state(
        self, outcome: AttemptOutcome, number: int, retry_after_header: str | None
    ) -> tuple[DeliveryState, datetime | None]:
        if outcome is AttemptOutcome.SUCCESS:
            return DeliveryState.SUCCEEDED, None
        if outcome is AttemptOutcome.DISABLE:
            return DeliveryState.DEAD, None
        now = self._clock()
        delay = next_attempt_delay(
            self._schedule,
            attempts_made=number,
            retry_after=parse_retry_after(retry_after_header, now=now),
            random=self._rng,
        )
        if delay is None:
            return DeliveryState.DEAD, None
        return DeliveryState.RETRYING, now + timedelta(seconds=delay)

    def _completion(
        self,
        delivery: ClaimedDelivery,
        number: int,
        started: datetime,
        *,
        status: int,
        latency: float,
        error: str,
        snippet: str,
        state: DeliveryState,
        next_time: datetime | None,
        endpoint_failed: bool | None,
    ) -> Completion:
        return Completion(
            delivery_id=delivery.id,
            subscription_id=delivery.subscription_id,
            attempt=Attempt(
                number=number,
                start_time=started,
                status_code=status,
                latency_ms=round(latency * 1000),
                error=error,
                response_snippet=snippet,
            ),
            state=state,
            next_attempt_time=next_time,
            endpoint_failed=endpoint_failed,
        )
