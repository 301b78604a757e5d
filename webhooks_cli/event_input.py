"""Events as operators write them: the payload receivers get, as JSON, into a gRPC Event.

    {"messageId": "09feeb6f-...", "timestamp": "2021-10-14T15:33:16.848Z",
     "details": {"messageType": "event.claim.created.v1", "claimRef": "C-1", ...},
     "user": {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"}}

`details` (with its `messageType`) is required; `messageId` is generated (uuid4) when
missing; `timestamp` (ISO 8601 with a time zone) defaults to the time the dispatcher
accepts the event; `user` is optional. A whole documented delivery body
(`{"payload": {...}, "signature": ...}`) may be given too: its `payload` is used.
Fields are named as in this JSON (`details.amount`, `user.poolId`), also when the
dispatcher refuses one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime

from webhook_contracts.locations import dotted
from webhook_wire import strict_json
from webhooks.v1 import dispatcher_service_pb2 as pb

__all__ = ["InvalidEvent", "event_of", "json_field_name", "parse_event"]

_FIELDS = ("details", "messageId", "timestamp", "user")
_USER_FIELDS = {"id": "id", "poolId": "pool_id", "originator": "originator"}
_DELIVERY_BODY_FIELDS = {"payload", "signature", "payloadAsString"}
# The dispatcher names the fields of the gRPC Event; the operator wrote the payload's names.
_JSON_NAMES = {
    "message_id": "messageId",
    "message_type": "details.messageType",
    "user.pool_id": "user.poolId",
}


class InvalidEvent(Exception):
    """An event that cannot be sent as it is: the wrong fields, by their JSON names."""

    def __init__(self, violations: list[tuple[str, str]], *, message_id: str = "") -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in violations))
        self.violations = violations
        self.message_id = message_id


def json_field_name(name: str) -> str:
    """A field the dispatcher named (`message_id`) by its name in the event JSON."""
    return _JSON_NAMES.get(name, name)


def parse_event(text: str, *, tenant: str) -> pb.Event:
    """The Event of one JSON document."""
    try:
        value = strict_json.loads(text)
    except strict_json.JsonRefused as refused:
        raise InvalidEvent([(dotted(refused.path) or "body", refused.reason)]) from None
    return event_of(value, tenant=tenant)


def event_of(value: object, *, tenant: str) -> pb.Event:
    """The Event of a parsed JSON value; InvalidEvent names every wrong field."""
    if _is_delivery_body(value):
        value = value["payload"]  # type: ignore[index]
    if not isinstance(value, dict):
        raise InvalidEvent([("body", "must be a JSON object (the event's payload)")])
    violations = [
        (name, f"unknown field; an event has {', '.join(_FIELDS)}")
        for name in value
        if name not in _FIELDS
    ]
    message_id = value.get("messageId", str(uuid.uuid4()))
    if not isinstance(message_id, str):
        violations.append(("messageId", "must be a string"))
        message_id = ""
    event = pb.Event(tenant=tenant, message_id=message_id)
    details = value.get("details")
    if not isinstance(details, dict):
        violations.append(("details", "required: a JSON object with its messageType"))
    else:
        message_type = details.get("messageType")
        if isinstance(message_type, str):
            event.message_type = message_type
        else:
            violations.append(("details.messageType", "required: a string"))
        event.details = json.dumps(details, ensure_ascii=False, separators=(",", ":"))
    if "timestamp" in value:
        _timestamp(event, value["timestamp"], violations)
    if "user" in value:
        _user(event, value["user"], violations)
    if violations:
        raise InvalidEvent(violations, message_id=message_id)
    return event


def _timestamp(event: pb.Event, value: object, violations: list[tuple[str, str]]) -> None:
    example = "ISO 8601 with a time zone, e.g. 2021-10-14T15:33:16.848Z"
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        violations.append(("timestamp", f"must be {example}"))
        return
    try:
        event.timestamp.FromDatetime(moment)
    except (ValueError, OverflowError):
        violations.append(("timestamp", f"must be {example}"))


def _user(event: pb.Event, value: object, violations: list[tuple[str, str]]) -> None:
    if not isinstance(value, Mapping):
        violations.append(("user", "must be an object with id, poolId, originator"))
        return
    for name, proto_name in _USER_FIELDS.items():
        given = value.get(name)
        if isinstance(given, str):
            setattr(event.user, proto_name, given)
        else:
            violations.append((f"user.{name}", "required: a string"))
    violations.extend(
        (f"user.{name}", "unknown field; a user has id, poolId, originator")
        for name in value
        if name not in _USER_FIELDS
    )


def _is_delivery_body(value: object) -> bool:
    return (
        isinstance(value, dict)
        and "details" not in value
        and isinstance(value.get("payload"), dict)
        and set(value) <= _DELIVERY_BODY_FIELDS
    )
