"""Domain values of the subscription service, free of protobuf and SQL."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "Change",
    "ChangeType",
    "ListQuery",
    "NewSubscription",
    "SignatureAlgorithm",
    "Subscription",
    "SubscriptionPatch",
]


class SignatureAlgorithm(enum.StrEnum):
    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"
    RSA_PKCS1_SHA256 = "rsa-pkcs1-sha256"


@dataclass(frozen=True, kw_only=True)
class Subscription:
    id: str
    tenant: str
    url: str
    message_types: tuple[str, ...]
    enabled: bool
    description: str
    signature_algorithm: SignatureAlgorithm
    secret: str | None
    disabled_reason: str
    version: int
    create_time: datetime
    update_time: datetime

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


@dataclass(frozen=True, kw_only=True)
class NewSubscription:
    """A validated subscription to create."""

    tenant: str
    url: str
    message_types: tuple[str, ...]
    enabled: bool
    description: str
    signature_algorithm: SignatureAlgorithm
    secret: str | None


@dataclass(frozen=True, kw_only=True)
class SubscriptionPatch:
    """Validated new values for the fields of an update mask; None leaves a field alone."""

    url: str | None = None
    message_types: tuple[str, ...] | None = None
    enabled: bool | None = None
    description: str | None = None
    signature_algorithm: SignatureAlgorithm | None = None
    # "" removes the secret.
    secret: str | None = None
    disabled_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ListQuery:
    tenant: str | None
    page_size: int
    message_type: str | None = None
    enabled: bool | None = None


class ChangeType(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True)
class Change:
    """A committed change: the subscription's state after it (its last state if deleted)."""

    type: ChangeType
    subscription: Subscription
    # Where the change stands in the change log: later changes have greater positions.
    position: int
