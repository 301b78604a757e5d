"""Ingestion: check each published event, route it, and store it before it is acknowledged.

A bad event is refused on its own (per-event error); the good events of the same
batch are stored together in one transaction, and only then acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from dispatcher_service.delivery_queue import DeliveryQueue
from dispatcher_service.domain import (
    ClaimedDelivery,
    HandOff,
    Ingested,
    IngestOutcome,
    PreparedEvent,
    Target,
)
from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.rate_limit import TenantRateLimiter
from service_common.auth import Caller, Scope
from service_common.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    StoreUnavailable,
    WebhooksError,
)
from service_common.logs import log_context
from webhook_contracts import ContractViolation, Registry, UnknownMessageType, dotted
from webhook_wire import strict_json
from webhook_wire.canonical import payload_as_string

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_DETAILS_BYTES",
    "MAX_DETAILS_DEPTH",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_USER_FIELD_LENGTH",
    "EventUser",
    "IncomingEvent",
    "Ingestor",
    "LocalWorker",
    "Rejected",
    "RouteSource",
]

log = logging.getLogger(__name__)
MAX_BATCH_EVENTS = 500
MAX_DETAILS_BYTES = 64 * 1024
# Levels of arrays and objects, details itself the first: a webhook body adds two, and stays
# well within what receivers' parsers take (strict_json.MAX_DEPTH).
MAX_DETAILS_DEPTH = 32
MAX_MESSAGE_ID_LENGTH = 200
# Each of user.id, user.pool_id and user.originator; the contracts leave them unbounded.
MAX_USER_FIELD_LENGTH = 1024
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
# Contract paths are dotted from the webhook body; publishers know the gRPC field names.
_FIELD_NAMES = {
    "payload.messageId": "message_id",
    "payload.timestamp": "timestamp",
    "payload.user.poolId": "user.pool_id",
}


@dataclass(frozen=True, kw_only=True)
class EventUser:
    id: str
    pool_id: str
    originator: str


@dataclass(frozen=True, kw_only=True)
class IncomingEvent:
    """An event as a publisher sent it, before any check."""

    tenant: str
    message_id: str
    message_type: str
    timestamp: datetime | None
    details: str
    user: EventUser | None


@dataclass(frozen=True)
class Rejected:
    """A refused event: the error that says why."""

    message_id: str
    error: WebhooksError


class _Route(Protocol):
    @property
    def subscription_id(self) -> str: ...

    @property
    def url(self) -> str: ...


class RouteSource(Protocol):
    """Where ingestion learns which subscriptions receive an event."""

    def is_ready(self) -> bool: ...

    def routes_for(self, tenant: str, message_type: str) -> Sequence[_Route]: ...


class LocalWorker(Protocol):
    """The delivery worker of the ingesting process (see `DeliveryWorker`)."""

    def offer(self, targets: Sequence[Target]) -> HandOff | None: ...

    async def accept(self, offer: HandOff, deliveries: list[ClaimedDelivery]) -> None: ...

    def withdraw(self, offer: HandOff) -> None: ...

    def wake(self, subscription_ids: Collection[str] = ()) -> None: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Ingestor:
    def __init__(
        self,
        *,
        store: DeliveryQueue,
        registry: Registry,
        routes: RouteSource,
        clock: Callable[[], datetime] = _utc_now,
        worker: LocalWorker | None = None,
        metrics: DispatcherMetrics | None = None,
        limiter: TenantRateLimiter | None = None,
    ) -> None:
        """`worker`: the delivery worker of this process, if any; it takes what it can of
        the new deliveries as they are stored, and is woken for the others."""
        self._limiter = limiter
        self._writer = _GroupCommit(store, worker=worker)
        self._metrics = metrics or DispatcherMetrics()
        self._registry = registry
        self._routes = routes
        self._clock = clock

    async def publish(
        self, caller: Caller, events: Sequence[IncomingEvent]
    ) -> list[IngestOutcome | Rejected]:
        """Results in the order of `events`; raises only for what concerns the whole call."""
        caller.require(Scope.PUBLISH)
        if len(events) > MAX_BATCH_EVENTS:
            raise InvalidArgument.of("events", f"at most {MAX_BATCH_EVENTS} events per request")
        if not self._routes.is_ready():
            raise StoreUnavailable("routing is not loaded yet; retry shortly")
        now = self._clock()
        now_text = _iso_millis(now)
        checked = [self._prepare(caller, event, now_text=now_text) for event in events]
        good = [item for item in checked if isinstance(item, PreparedEvent)]
        if good and self._limiter is not None:
            self._take_rate(self._limiter, good)
        stored = iter(await self._writer.ingest(good, now=now) if good else [])
        results = [item if isinstance(item, Rejected) else next(stored) for item in checked]
        self._count(results)
        return results

    def _take_rate(self, limiter: TenantRateLimiter, events: Sequence[PreparedEvent]) -> None:
        """Charges the events about to be stored to their tenants, or refuses them all."""
        counts = collections.Counter(event.tenant for event in events)
        wait = limiter.acquire(counts)
        if wait is None:
            return
        self._metrics.events.labels("throttled").inc(len(events))
        raise ResourceExhausted(
            f"over the publish rate of {limiter.rate:g} events/s per tenant "
            f"(burst {limiter.burst}); nothing of this request was stored; "
            # Rounded up: waiting the time shown is always enough.
            f"retry in {math.ceil(wait * 1000) / 1000:.3f} s",
            retry_after=wait,
        )

    def _count(self, results: Sequence[IngestOutcome | Rejected]) -> None:
        duplicates = rejected = 0
        for result in results:
            if isinstance(result, Rejected):
                rejected += 1
                with log_context(message_id=result.message_id[:MAX_MESSAGE_ID_LENGTH]):
                    log.info("event refused: %s", result.error)
            elif result.duplicate:
                duplicates += 1
        events = self._metrics.events
        events.labels("accepted").inc(len(results) - duplicates - rejected)
        if duplicates:
            events.labels("duplicate").inc(duplicates)
        if rejected:
            events.labels("rejected").inc(rejected)

    def _prepare(
        self, caller: Caller, event: IncomingEvent, *, now_text: str
    ) -> PreparedEvent | Rejected:
        try:
            tenant = caller.tenant_to_write(event.tenant, field="tenant")
            payload = self._payload(event, now_text=now_text)
        except WebhooksError as error:
            return Rejected(event.message_id, error)
        targets = tuple(
            Target(route.subscription_id, route.url)
            for route in self._routes.routes_for(tenant, event.message_type)
        )
        return PreparedEvent(
            tenant=tenant,
            message_id=event.message_id,
            message_type=event.message_type,
            payload=payload,
            targets=targets,
        )

    def _payload(self, event: IncomingEvent, *, now_text: str) -> str:
        _check_message_id(event.message_id)
        try:
            contract = self._registry.get(event.message_type)
        except UnknownMessageType:
            raise InvalidArgument.of(
                "message_type", f"unknown message type '{event.message_type[:200]}'"
            ) from None
        details = _details(event)
        given_type = details.setdefault("messageType", event.message_type)
        if given_type != event.message_type:
            raise InvalidArgument.of(
                "details.messageType", f"must equal message_type '{event.message_type}'"
            )
        payload: dict[str, object] = {
            "details": details,
            "messageId": event.message_id,
            "timestamp": now_text if event.timestamp is None else _iso_millis(event.timestamp),
        }
        if event.user is not None:
            _check_user(event.user)
            payload["user"] = {
                "id": event.user.id,
                "poolId": event.user.pool_id,
                "originator": event.user.originator,
            }
        violations = contract.violations(payload)
        if violations:
            raise InvalidArgument(_field_violation(v) for v in violations)
        try:
            return payload_as_string(payload)
        except ValueError as error:
            raise InvalidArgument.of("details", str(error)) from None


class _GroupCommit:
    """Stores the batches that arrive while a transaction is being written together, in
    the next transaction: one commit (one fsync) for many publishers' batches.

    Each caller still gets its own outcomes and is answered only after the commit that
    holds its events; batches are written in the order they arrived, so across them the
    first of two equal message ids is the one stored.
    """

    def __init__(
        self, store: DeliveryQueue, *, worker: LocalWorker | None = None, max_events: int = 2000
    ) -> None:
        self._store = store
        self._worker = worker
        self._max_events = max_events
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._writing: asyncio.Task[None] | None = None

    async def ingest(
        self, events: Sequence[PreparedEvent], *, now: datetime
    ) -> list[IngestOutcome]:
        waiting = _Waiting(events, now, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_all())
        return await waiting.outcomes

    async def _write_all(self) -> None:
        while self._waiting:
            group: list[_Waiting] = []
            count = 0
            while self._waiting and (
                not group or count + len(self._waiting[0].events) <= self._max_events
            ):
                count += len(self._waiting[0].events)
                group.append(self._waiting.popleft())
            events = [event for waiting in group for event in waiting.events]
            # A failed write is never acknowledged: every caller of the group is refused
            # with UNAVAILABLE and sends its batch again (told DUPLICATE for whatever a
            # commit whose answer was lost did store).
            try:
                outcomes = (await self._store_handing_off(events, now=group[0].now)).outcomes
            except StoreUnavailable as error:
                _fail(group, error)
                continue
            except Exception:
                log.exception("storing %d events failed", len(events))
                _fail(group, StoreUnavailable("the events could not be stored; retry"))
                continue
            except BaseException:
                # Cancelled (shutting down): whether the commit happened or not, no caller
                # may be left waiting; one that retries is told DUPLICATE if it did.
                _fail([*group, *self._waiting], StoreUnavailable("shutting down; retry"))
                self._waiting.clear()
                raise
            start = 0
            for waiting in group:
                end = start + len(waiting.events)
                if not waiting.outcomes.done():  # its caller may have gone
                    waiting.outcomes.set_result(outcomes[start:end])
                start = end

    async def _store_handing_off(
        self, events: Sequence[PreparedEvent], *, now: datetime
    ) -> Ingested:
        """Stores `events`: their new deliveries that the worker offers to take leased to
        it and handed to it, the worker woken for the others."""
        worker = self._worker
        targets = [target for event in events for target in event.targets]
        offer = worker.offer(targets) if worker is not None and targets else None
        try:
            ingested = await asyncio.to_thread(self._store.ingest, events, now=now, hand_off=offer)
        except BaseException:
            if offer is not None:
                assert worker is not None
                worker.withdraw(offer)
            raise
        if worker is not None:
            if ingested.due:
                worker.wake(ingested.due)
            if offer is not None:
                try:
                    await worker.accept(offer, ingested.handed_off)
                except Exception:
                    # Stored is stored: the events are acknowledged all the same, and what
                    # was handed off is sent once its lease runs out.
                    log.exception("handing %d deliveries over failed", len(ingested.handed_off))
        return ingested


@dataclass
class _Waiting:
    events: Sequence[PreparedEvent]
    now: datetime
    outcomes: asyncio.Future[list[IngestOutcome]]


def _fail(group: Sequence[_Waiting], error: StoreUnavailable) -> None:
    for waiting in group:
        if not waiting.outcomes.done():  # its caller may have gone
            waiting.outcomes.set_exception(error)


def _check_message_id(message_id: str) -> None:
    if not message_id:
        raise InvalidArgument.of("message_id", "required")
    if len(message_id) > MAX_MESSAGE_ID_LENGTH or not _PRINTABLE.fullmatch(message_id):
        raise InvalidArgument.of(
            "message_id",
            f"at most {MAX_MESSAGE_ID_LENGTH} printable ASCII characters without spaces",
        )


def _check_user(user: EventUser) -> None:
    fields = {"user.id": user.id, "user.pool_id": user.pool_id, "user.originator": user.originator}
    violations = [
        FieldViolation(name, f"at most {MAX_USER_FIELD_LENGTH} characters")
        for name, value in fields.items()
        if len(value) > MAX_USER_FIELD_LENGTH
    ]
    if violations:
        raise InvalidArgument(violations)


def _details(event: IncomingEvent) -> dict[str, object]:
    """The details object, refused rather than changed where JSON would not carry it
    faithfully (`strict_json`): the one rule of both publish routes."""
    if len(event.details.encode()) > MAX_DETAILS_BYTES:
        raise InvalidArgument.of("details", f"at most {MAX_DETAILS_BYTES} bytes of JSON")
    try:
        details = strict_json.loads(event.details, max_depth=MAX_DETAILS_DEPTH)
    except strict_json.JsonRefused as refused:
        raise InvalidArgument.of(dotted(("details", *refused.path)), refused.reason) from None
    if not isinstance(details, dict):
        raise InvalidArgument.of("details", "must be a JSON object")
    return details


def _iso_millis(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds; the year always has four digits."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


def _field_violation(violation: ContractViolation) -> FieldViolation:
    path = violation.path
    field = _FIELD_NAMES.get(path) or path.removeprefix("payload.") or "details"
    return FieldViolation(field, violation.message)
