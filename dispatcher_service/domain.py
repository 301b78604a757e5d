"""Domain values of the dispatcher, free of protobuf and SQL."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime

__all__ = [
    "INTERRUPTED_ERROR",
    "Attempt",
    "ClaimedBatch",
    "ClaimedDelivery",
    "Completion",
    "Delivery",
    "DeliveryQuery",
    "DeliveryState",
    "EndpointHealth",
    "HandOff",
    "IngestOutcome",
    "Ingested",
    "PreparedEvent",
    "QueueStats",
    "Target",
]


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


DUE_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)


@dataclass(frozen=True)
class QueueStats:
    """Deliveries waiting, by state, and when the longest-waiting due one became due."""

    depth: dict[DeliveryState, int]
    oldest_due_time: datetime | None


@dataclass(frozen=True)
class Target:
    """A subscription an event is routed to, as known at ingestion."""

    subscription_id: str
    url: str


@dataclass(frozen=True, kw_only=True)
class PreparedEvent:
    """A validated event ready to store: its signed text and where it goes."""

    tenant: str
    message_id: str
    message_type: str
    payload: str
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class IngestOutcome:
    message_id: str
    duplicate: bool
    deliveries: int


@dataclass(frozen=True, kw_only=True)
class HandOff:
    """New deliveries that a worker of the ingesting process takes as they are stored:
    written already leased to `owner` until `lease_expires` (claimed at once, in the
    ingestion's own transaction), at most `counts[subscription_id]` of each
    subscription's, first come first. The others are stored due, for claims."""

    owner: str
    lease_expires: datetime
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, kw_only=True)
class ClaimedDelivery:
    """A due delivery a worker holds the lease of, with what it needs to send it."""

    id: str
    tenant: str
    subscription_id: str
    message_id: str
    message_type: str
    url: str
    attempt_count: int
    payload: str
    # When it became due (its next_attempt_time), as the claim found it.
    due_time: datetime


@dataclass(frozen=True)
class Ingested:
    """What storing a batch of events did: an outcome per event, in the order given;
    the deliveries leased as a `HandOff` asked, in the order stored; and the
    subscriptions whose new deliveries were stored due, for claims to find."""

    outcomes: list[IngestOutcome]
    handed_off: list[ClaimedDelivery]
    due: set[str]


@dataclass(frozen=True)
class ClaimedBatch:
    """What one claim took: the deliveries to send now, and those whose lease had run out
    on their last attempt (dead now: nothing is sent).

    A delivery whose lease had run out is taken with the attempt that lease cut short
    recorded as interrupted, and counted in its `attempt_count`: those of `deliveries`
    are also in `interrupted`, the others in `dead`."""

    deliveries: list[ClaimedDelivery]
    interrupted: list[ClaimedDelivery]
    dead: list[ClaimedDelivery]


# The error of an attempt whose dispatcher was killed or stalled past its lease before an
# answer was recorded; whether its POST reached the endpoint is not known. The API shows
# it as the attempt's error, so readers tell it by its first word.
_INTERRUPTED_PREFIX = "interrupted:"
# What the delivery log keeps of an attempt's error and of the answer's body (the
# lengths of their columns).
MAX_ERROR_CHARS = 1024
MAX_SNIPPET_CHARS = 2048
INTERRUPTED_ERROR = (
    f"{_INTERRUPTED_PREFIX} the dispatcher that held it stopped before an answer was recorded"
)


@dataclass(frozen=True, kw_only=True)
class Attempt:
    number: int
    start_time: datetime
    status_code: int
    latency_ms: int
    error: str
    response_snippet: str

    @classmethod
    def interrupted_at(cls, *, number: int, claim_time: datetime) -> Attempt:
        """Attempt `number`, claimed at `claim_time` and cut short: no answer, no latency."""
        return cls(
            number=number,
            start_time=claim_time,
            status_code=0,
            latency_ms=0,
            error=INTERRUPTED_ERROR,
            response_snippet="",
        )

    @property
    def interrupted(self) -> bool:
        return self.status_code == 0 and self.error.startswith(_INTERRUPTED_PREFIX)

    def as_kept(self) -> Attempt:
        """This attempt as the delivery log keeps it: its error and the snippet of the
        answer cut to `MAX_ERROR_CHARS` and `MAX_SNIPPET_CHARS`."""
        if len(self.error) <= MAX_ERROR_CHARS and len(self.response_snippet) <= MAX_SNIPPET_CHARS:
            return self
        return replace(
            self,
            error=self.error[:MAX_ERROR_CHARS],
            response_snippet=self.response_snippet[:MAX_SNIPPET_CHARS],
        )


@dataclass(frozen=True, kw_only=True)
class Completion:
    """The result of one attempt and what the delivery becomes."""

    delivery_id: str
    # The delivery's tenant, for what counts attempts by tenant (the activity window).
    tenant: str
    subscription_id: str
    attempt: Attempt
    state: DeliveryState
    next_attempt_time: datetime | None
    # Whether the endpoint failed (counts towards auto-disable) or answered 2xx (resets
    # the count); None when no request reached it (e.g. the subscription is gone).
    endpoint_failed: bool | None


@dataclass(frozen=True, kw_only=True)
class EndpointHealth:
    """A subscription's current run of failed attempts."""

    subscription_id: str
    consecutive_failures: int
    first_failure_time: datetime


@dataclass(frozen=True, kw_only=True)
class Delivery:
    id: str
    tenant: str
    subscription_id: str
    message_id: str
    message_type: str
    url: str
    state: DeliveryState
    attempt_count: int
    next_attempt_time: datetime | None
    create_time: datetime
    update_time: datetime
    attempts: tuple[Attempt, ...] = field(default=())


@dataclass(frozen=True, kw_only=True)
class DeliveryQuery:
    tenant: str | None
    page_size: int
    subscription_id: str | None = None
    message_id: str | None = None
    state: DeliveryState | None = None
