"""Domain errors shared by both services.

    WebhooksError
     ├── InvalidArgument      a request field is wrong (carries the field violations)
     ├── Unauthenticated      no token, or a token nobody issued
     ├── PermissionDenied     a valid token without the scope or tenant for the call
     ├── NotFound             no such thing for this caller
     ├── AlreadyExists        the thing exists already
     ├── StaleEtag            the caller's etag is not the current one
     ├── FailedPrecondition   the thing is not in a state that allows the call
     ├── ResourceExhausted    a limit was reached
     └── StoreUnavailable     the database cannot be reached

Business code raises these; `service_common.grpc_errors` is the one place that turns
them into gRPC status codes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StaleEtag",
    "StoreUnavailable",
    "Unauthenticated",
    "WebhooksError",
]


@dataclass(frozen=True)
class FieldViolation:
    """One wrong field: its path in the request (`subscription.url`) and why."""

    field: str
    description: str


class WebhooksError(Exception):
    """Base of every error the services raise on purpose."""


class InvalidArgument(WebhooksError):
    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        super().__init__(
            "; ".join(f"{v.field}: {v.description}" for v in self.violations),
        )

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class Unauthenticated(WebhooksError):
    pass


class PermissionDenied(WebhooksError):
    pass


class NotFound(WebhooksError):
    pass


class AlreadyExists(WebhooksError):
    pass


class StaleEtag(WebhooksError):
    pass


class FailedPrecondition(WebhooksError):
    """The call is well formed, but what it names cannot do it any more (an event whose
    payload was expunged cannot be delivered again); the message says why."""


class ResourceExhausted(WebhooksError):
    """A limit was reached; `retry_after` (seconds), when known, says when to try again."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(WebhooksError):
    pass
