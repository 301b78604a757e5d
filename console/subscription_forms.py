"""The subscription forms, as the stubs' messages: pure functions from posted fields.

Message types are typed one per line (commas work too). On edit, a blank secret keeps
the current one and `remove_secret` drops it; every other field is sent as shown, with
the etag the form was drawn from, so a change made meanwhile is a conflict, not lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.field_mask_pb2 import FieldMask

from console.form_fields import field_text
from webhooks.v1 import subscription_service_pb2 as pb

__all__ = [
    "ALGORITHMS",
    "SubscriptionForm",
    "create_request",
    "form_of",
    "list_request",
    "posted",
    "split_types",
    "toggle_request",
    "update_request",
]

# The select's options: value posted, label shown, and the enum it stands for.
ALGORITHMS: tuple[tuple[str, str, pb.SignatureAlgorithm.ValueType], ...] = (
    ("", "Default (ECDSA P-256)", pb.SIGNATURE_ALGORITHM_UNSPECIFIED),
    ("ecdsa-p256-sha256", "ECDSA P-256, SHA-256", pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256),
    ("rsa-pkcs1-sha256", "RSA PKCS#1, SHA-256", pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256),
)
_EDITABLE = ("url", "message_types", "description", "signature_algorithm")
# The list's `enabled` filter: value in the query, and what it asks for (None: any).
_ENABLED_FILTER = {"": None, "true": True, "false": False}


@dataclass(frozen=True)
class SubscriptionForm:
    """What the form shows, or what was posted (redrawn as typed when refused)."""

    url: str = ""
    message_types: str = ""
    description: str = ""
    signature_algorithm: str = ""
    secret: str = ""
    remove_secret: bool = False
    enabled: bool = True
    tenant: str = ""
    etag: str = ""


def split_types(text: str) -> list[str]:
    """Message types typed one per line or comma-separated, blanks and repeats dropped."""
    seen: dict[str, None] = {}
    for entry in text.replace(",", "\n").splitlines():
        if entry.strip():
            seen.setdefault(entry.strip(), None)
    return list(seen)


def posted(fields: Mapping[str, object]) -> SubscriptionForm:
    """The form as posted (unknown or non-text fields ignored)."""

    def text(name: str) -> str:
        return field_text(fields, name)

    return SubscriptionForm(
        url=text("url"),
        message_types=text("message_types"),
        description=text("description"),
        signature_algorithm=text("signature_algorithm"),
        secret=text("secret"),
        remove_secret=text("remove_secret") == "on",
        enabled=text("enabled") == "on",
        tenant=text("tenant"),
        etag=text("etag"),
    )


def list_request(
    query: Mapping[str, str], *, all_tenants: bool, page_size: int
) -> tuple[dict[str, str], pb.ListSubscriptionsRequest]:
    """The list's filters as typed (for the form and the pager) and its request.

    `enabled` is `true`, `false` or empty (any); `tenant` is only sent for a token of every
    tenant.
    """
    filters = {name: query.get(name, "") for name in ("message_type", "enabled", "tenant")}
    listing = pb.ListSubscriptionsRequest(
        page_size=page_size,
        page_token=query.get("page", ""),
        message_type=filters["message_type"],
        tenant=filters["tenant"] if all_tenants else "",
    )
    enabled = _ENABLED_FILTER.get(filters["enabled"])
    if enabled is not None:
        listing.enabled = enabled
    return filters, listing


def form_of(subscription: pb.Subscription) -> SubscriptionForm:
    """The edit form of a stored subscription (its secret is never shown)."""
    return SubscriptionForm(
        url=subscription.url,
        message_types="\n".join(subscription.message_types),
        description=subscription.description,
        signature_algorithm=_algorithm_value(subscription.signature_algorithm),
        enabled=subscription.enabled,
        tenant=subscription.tenant,
        etag=subscription.etag,
    )


def create_request(form: SubscriptionForm) -> pb.CreateSubscriptionRequest:
    return pb.CreateSubscriptionRequest(
        subscription=pb.Subscription(
            tenant=form.tenant,
            url=form.url,
            message_types=split_types(form.message_types),
            enabled=form.enabled,
            description=form.description,
            signature_algorithm=_algorithm_enum(form.signature_algorithm),
            secret=form.secret,
        )
    )


def update_request(subscription_id: str, form: SubscriptionForm) -> pb.UpdateSubscriptionRequest:
    paths = list(_EDITABLE)
    if form.secret or form.remove_secret:
        paths.append("secret")
    return pb.UpdateSubscriptionRequest(
        subscription=pb.Subscription(
            id=subscription_id,
            url=form.url,
            message_types=split_types(form.message_types),
            description=form.description,
            signature_algorithm=_algorithm_enum(form.signature_algorithm),
            secret="" if form.remove_secret else form.secret,
            etag=form.etag,
        ),
        update_mask=FieldMask(paths=paths),
    )


def toggle_request(
    subscription_id: str, *, enabled: bool, reason: str, etag: str
) -> pb.UpdateSubscriptionRequest:
    """Enables (clearing the reason) or disables with `reason`, if still at `etag`."""
    return pb.UpdateSubscriptionRequest(
        subscription=pb.Subscription(
            id=subscription_id,
            enabled=enabled,
            disabled_reason="" if enabled else reason,
            etag=etag,
        ),
        update_mask=FieldMask(paths=["enabled"] if enabled else ["enabled", "disabled_reason"]),
    )


def _algorithm_enum(value: str) -> pb.SignatureAlgorithm.ValueType:
    for posted_value, _, algorithm in ALGORITHMS:
        if posted_value == value:
            return algorithm
    return pb.SIGNATURE_ALGORITHM_UNSPECIFIED


def _algorithm_value(algorithm: pb.SignatureAlgorithm.ValueType) -> str:
    for value, _, known in ALGORITHMS:
        if known == algorithm:
            return value
    return ""
