"""One attempt at a delivery, in the task it runs in: what it makes of the delivery (the
attempt as recorded, and whether the delivery succeeded, is tried again and when, or is
dead), and how that is told: a span when tracing, a log line when it failed or was cut
short."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from dispatcher_service.domain import (
    INTERRUPTED_ERROR,
    Attempt,
    ClaimedBatch,
    ClaimedDelivery,
    Completion,
    DeliveryState,
)
from dispatcher_service.retry import (
    AttemptOutcome,
    RetrySchedule,
    next_attempt_delay,
    parse_retry_after,
)
from service_common.logs import bind_log_context, log_context
from service_common.tracing import tracing_enabled

__all__ = [
    "SendResult",
    "answered",
    "next_state",
    "note_interrupted",
    "run",
    "unsent",
]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


class SendResult(Protocol):
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


def unsent(delivery: ClaimedDelivery, started: datetime, *, deleted: bool) -> Completion:
    """Dead without a request: its subscription is deleted, or disabled. Not the
    endpoint's failure, so it counts neither way towards auto-disable."""
    error = "subscription deleted" if deleted else "subscription disabled"
    return Completion(
        delivery_id=delivery.id,
        tenant=delivery.tenant,
        subscription_id=delivery.subscription_id,
        attempt=_attempt(delivery, started, status=0, latency=0.0, error=error, snippet=""),
        state=DeliveryState.DEAD,
        next_attempt_time=None,
        endpoint_failed=None,
    )


def answered(
    delivery: ClaimedDelivery,
    started: datetime,
    result: SendResult,
    outcome: AttemptOutcome,
    then: tuple[DeliveryState, datetime | None],
) -> Completion:
    """The attempt that got `result` (classified as `outcome`); the delivery becomes
    `then` (its state, and when it is tried next)."""
    state, next_time = then
    attempt = _attempt(
        delivery,
        started,
        status=result.status_code or 0,
        latency=result.latency,
        error=result.error or "",
        snippet=result.response_snippet,
    )
    return Completion(
        delivery_id=delivery.id,
        tenant=delivery.tenant,
        subscription_id=delivery.subscription_id,
        attempt=attempt,
        state=state,
        next_attempt_time=next_time,
        endpoint_failed=outcome is not AttemptOutcome.SUCCESS,
    )


def next_state(
    outcome: AttemptOutcome,
    *,
    attempts_made: int,
    retry_after: str | None,
    schedule: RetrySchedule,
    clock: Callable[[], datetime],
    rng: Callable[[], float],
) -> tuple[DeliveryState, datetime | None]:
    """What a delivery becomes after `attempts_made` attempts, the last one `outcome`:
    the schedule (or the endpoint's Retry-After) says when it is tried again, if at all."""
    if outcome is AttemptOutcome.SUCCESS:
        return DeliveryState.SUCCEEDED, None
    if outcome is AttemptOutcome.DISABLE:
        return DeliveryState.DEAD, None
    now = clock()
    delay = next_attempt_delay(
        schedule,
        attempts_made=attempts_made,
        retry_after=parse_retry_after(retry_after, now=now),
        random=rng,
    )
    if delay is None:
        return DeliveryState.DEAD, None
    return DeliveryState.RETRYING, now + timedelta(seconds=delay)


def _attempt(
    delivery: ClaimedDelivery,
    started: datetime,
    *,
    status: int,
    latency: float,
    error: str,
    snippet: str,
) -> Attempt:
    return Attempt(
        number=delivery.attempt_count + 1,
        start_time=started,
        status_code=status,
        latency_ms=round(latency * 1000),
        error=error,
        response_snippet=snippet,
    )


async def run(
    delivery: ClaimedDelivery,
    *,
    attempt: Callable[[ClaimedDelivery], Awaitable[Completion]],
    record: Callable[[Completion], None],
) -> None:
    """Makes one `attempt` at `delivery` in a task of its own, tells how it ended and
    `record`s that."""
    # What is bound here stays with the task.
    bind_log_context(
        delivery_id=delivery.id,
        message_id=delivery.message_id,
        subscription_id=delivery.subscription_id,
    )
    with _span(delivery) as span:
        try:
            completion = await attempt(delivery)
        except Exception:
            # A bug must not lose the delivery: its lease expires and it is tried again.
            log.exception("delivery failed unexpectedly")
            return
        _tell(completion, span)
    record(completion)


def _span(delivery: ClaimedDelivery) -> contextlib.AbstractContextManager[Span | None]:
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


def _tell(completion: Completion, span: Span | None) -> None:
    """On the attempt's span, and in a log line unless it succeeded."""
    attempt = completion.attempt
    if span is not None:
        span.set_attribute("http.response.status_code", attempt.status_code)
        span.set_attribute("webhooks.outcome", completion.state.value)
    if completion.state is DeliveryState.SUCCEEDED:
        return
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


def note_interrupted(batch: ClaimedBatch, *, count: Callable[[DeliveryState, str], None]) -> None:
    """Logs and `count`s (by state and tenant) the attempts that `batch`'s claim found cut
    short (their dispatcher was killed, or stalled past its lease) and recorded as
    interrupted."""
    for state, deliveries in (
        (DeliveryState.RETRYING, batch.interrupted),
        (DeliveryState.DEAD, batch.dead),
    ):
        for delivery in deliveries:
            count(state, delivery.tenant)
            _log_interrupted(delivery, state)


def _log_interrupted(delivery: ClaimedDelivery, state: DeliveryState) -> None:
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
