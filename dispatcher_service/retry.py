"""When to try a delivery again, and when to give up on an endpoint: policy as data.

Every function here is pure: the caller passes the clock (`now`) and the random source,
so the schedule can be tested exactly and replayed.

Timeline of one delivery under the default schedule (attempt n waits `delays[n - 1]`
after the previous failure, jittered):

    attempt 1: immediately     attempt 5: +2 h
    attempt 2: +5 s            attempt 6: +5 h
    attempt 3: +5 min          attempt 7: +10 h
    attempt 4: +30 min         attempt 8: +10 h     then dead (about 27.6 h in all)

An attempt cut short (its dispatcher killed, or stalled past its lease, before the answer
was recorded) counts as one of them, but is followed by the next at once: see
`after_interruption`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from dispatcher_service.domain import Completion, DeliveryState

__all__ = [
    "DEFAULT_DELAYS",
    "AttemptOutcome",
    "DisablePolicy",
    "RetrySchedule",
    "after_interruption",
    "classify",
    "next_attempt_delay",
    "parse_duration",
    "parse_retry_after",
    "should_disable",
]

# The schedule Svix publishes; Stripe and GitHub-style platforms are in the same range.
DEFAULT_DELAYS: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
# More attempts than this is a configuration mistake, not a policy.
MAX_ATTEMPTS = 100
# A receiver's Retry-After is a request, not an order: past an hour we retry anyway.
DEFAULT_RETRY_AFTER_CAP = 3600.0
# Retry-After delta-seconds longer than this is not a number we believe in.
_MAX_RETRY_AFTER_DIGITS = 12

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?")
_DELTA_SECONDS_RE = re.compile(r"[0-9]+")


def parse_duration(text: str) -> float:
    """Seconds in `"5m"`, `"1.5h"`, `"250ms"` or a bare number of seconds."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 0s, 5s, 5m, 2h, 1d)")
    number, unit = match.groups()
    return float(number) * _UNIT_SECONDS[unit or "s"]


@dataclass(frozen=True, kw_only=True)
class RetrySchedule:
    """The delays before each attempt, with jitter and a bound on `Retry-After`.

    `delays[0]` is the wait before the first attempt (usually 0), `delays[n]` the wait after
    the n-th failed attempt. `jitter` spreads every delay uniformly over
    `delay * (1 ± jitter)`, so deliveries that failed together do not all retry together.
    """

    delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = 0.2
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP

    def __post_init__(self) -> None:
        if not 1 <= len(self.delays) <= MAX_ATTEMPTS:
            raise ValueError(f"a retry schedule has 1 to {MAX_ATTEMPTS} delays")
        if any(not math.isfinite(d) or d < 0 for d in self.delays):
            raise ValueError("retry delays must be finite and not negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        if not math.isfinite(self.retry_after_cap) or self.retry_after_cap < 0:
            raise ValueError("the Retry-After cap must be finite and not negative")

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        jitter: float = 0.2,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
    ) -> RetrySchedule:
        """A schedule from configuration text such as `"0s,5s,5m,30m,2h,5h,10h,10h"`."""
        parts = [part for part in text.split(",") if part.strip()]
        return cls(
            delays=tuple(parse_duration(part) for part in parts),
            jitter=jitter,
            retry_after_cap=retry_after_cap,
        )

    @property
    def max_attempts(self) -> int:
        return len(self.delays)

    @property
    def total_seconds(self) -> float:
        """How long a delivery that always fails stays alive, without jitter."""
        return sum(self.delays)


def next_attempt_delay(
    schedule: RetrySchedule,
    *,
    attempts_made: int,
    retry_after: float | None,
    random: Callable[[], float],
) -> float | None:
    """Seconds to wait before the next attempt, or None when the delivery is dead.

    A `Retry-After` the receiver sent lengthens the wait, never shortens it: the delay is
    `max(jittered schedule delay, min(retry_after, cap))`. Shortening would let a
    receiver pull retries forward and defeat the backoff that protects it; honouring it
    unbounded would let one header park a delivery for weeks.

    `random` returns a float in [0, 1), as `random.random` does.
    """
    if attempts_made < 0:
        raise ValueError("attempts_made cannot be negative")
    if retry_after is not None and (not math.isfinite(retry_after) or retry_after < 0):
        raise ValueError("retry_after must be finite and not negative")
    if attempts_made >= schedule.max_attempts:
        return None
    base = schedule.delays[attempts_made]
    delay = base * (1 + schedule.jitter * (2 * random() - 1))
    if retry_after is None:
        return delay
    return max(delay, min(retry_after, schedule.retry_after_cap))


def after_interruption(*, number: int, max_attempts: int) -> DeliveryState:
    """What a delivery becomes when its attempt `number` was interrupted: RETRYING, due
    at once, while the schedule (of `max_attempts`) has attempts left; DEAD after the last.

    The interruption takes an attempt number, as the receiver may well have had the POST.
    It uses up one of the schedule's attempts, so a delivery that kills its dispatcher every
    time ends dead rather than being sent forever; the lease it waited out is its backoff.
    It says nothing about the endpoint, so it never counts towards disabling it.
    """
    if number < 1 or max_attempts < 1:
        raise ValueError("attempts are numbered from 1")
    return DeliveryState.RETRYING if number < max_attempts else DeliveryState.DEAD


def parse_retry_after(header_value: str | None, *, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks for (RFC 9110 §10.2.3), or None if unusable.

    Accepts delta-seconds (`"120"`) and an HTTP-date in any of its three forms; a date in
    the past means "now" (0). Negative, fractional or otherwise malformed values are
    ignored rather than guessed at. `now` must be timezone-aware.
    """
    if header_value is None:
        return None
    value = header_value.strip()
    if _DELTA_SECONDS_RE.fullmatch(value):
        if len(value) > _MAX_RETRY_AFTER_DIGITS:
            return None
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (ValueError, TypeError):
        return None
    if when.tzinfo is None:
        # HTTP-dates are always GMT; the asctime form just does not say so.
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class AttemptOutcome(enum.Enum):
    """What one attempt means for its delivery and its endpoint."""

    SUCCESS = "success"
    # The attempt failed; try again on the schedule (or die if it is spent).
    RETRY = "retry"
    # The receiver said the endpoint is gone (410): stop, and disable the endpoint.
    DISABLE = "disable"


def classify(status_code: int | None, error: str | None) -> AttemptOutcome:
    """The outcome of an attempt from its HTTP status, or its error when there was none.

    A 2xx counts even if reading the rest of the body then failed: the receiver has
    accepted the webhook. Every other answer, including 3xx (redirects are not followed)
    and 4xx other than 410, is a failed attempt that will be retried.
    """
    if status_code is None:
        if error is None:
            raise ValueError("an attempt without a status code must carry an error")
        return AttemptOutcome.RETRY
    if 200 <= status_code <= 299:
        return AttemptOutcome.SUCCESS
    if status_code == 410:
        return AttemptOutcome.DISABLE
    return AttemptOutcome.RETRY


@dataclass(frozen=True, kw_only=True)
class DisablePolicy:
    """When an endpoint that keeps failing is disabled.

    Both must hold: at least `consecutive_failures` failed attempts in a row, and the
    first of them at least `min_failing_seconds` ago. The count alone would disable a
    busy endpoint after a minute's outage; the time alone would disable a quiet one after
    two unlucky attempts days apart. The default follows Svix: five days of failures.
    """

    consecutive_failures: int = 10
    min_failing_seconds: float = 5 * 86400.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1")
        if not math.isfinite(self.min_failing_seconds) or self.min_failing_seconds < 0:
            raise ValueError("min_failing_seconds must be finite and not negative")


def should_disable(
    policy: DisablePolicy,
    *,
    consecutive_failures: int,
    first_failure_at: datetime | None,
    now: datetime,
) -> bool:
    """Whether the endpoint's current run of failures reaches the policy's threshold."""
    if first_failure_at is None or consecutive_failures < policy.consecutive_failures:
        return False
    return (now - first_failure_at).total_seconds() >= policy.min_failing_seconds


@dataclass(frozen=True)
class EndpointRun:
    """What one batch of attempts did to an endpoint's run of failures: `failures` since
    its last success in the batch, and whether it had one (`restart`: the run that goes
    on, if any, starts again)."""

    failures: int = 0
    restart: bool = False


def endpoint_runs(completions: Iterable[Completion]) -> dict[str, EndpointRun]:
    """The run of every endpoint (by subscription) that an attempt of `completions`
    reached; attempts that never reached their endpoint do not count."""
    runs: dict[str, EndpointRun] = {}
    for completion in completions:
        if completion.endpoint_failed is None:
            continue
        run = runs.get(completion.subscription_id, EndpointRun())
        failed = completion.endpoint_failed
        runs[completion.subscription_id] = (
            EndpointRun(run.failures + 1, run.restart) if failed else EndpointRun(0, True)
        )
    return runs
