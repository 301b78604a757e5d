"""What a failed call says about a form: its field violations, by the form's field names."""

from __future__ import annotations

import re
from collections.abc import Iterable

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["field_errors", "form_field", "violations"]

_DETAILS_KEY = "grpc-status-details-bin"
_INDEX = re.compile(r"\[\d+\]")


def violations(metadata: Iterable[tuple[str, object]]) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest (field, description) pairs in a call's trailing metadata."""
    found: list[tuple[str, str]] = []
    for key, value in metadata:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                found.extend((v.field, v.description) for v in bad_request.field_violations)
    return found


def form_field(field: str, *, prefix: str = "subscription.") -> str:
    """`subscription.message_types[2]` as the form's `message_types`."""
    return _INDEX.sub("", field.removeprefix(prefix)).split(".")[0]


def field_errors(error: grpc.aio.AioRpcError, *, prefix: str = "subscription.") -> dict[str, str]:
    """Each form field's first violation; a call with none names the whole form (``)."""
    errors: dict[str, str] = {}
    for field, description in violations(_pairs(error)):
        errors.setdefault(form_field(field, prefix=prefix), description)
    if not errors:
        errors[""] = error.details() or error.code().name
    return errors


def _pairs(error: grpc.aio.AioRpcError) -> list[tuple[str, object]]:
    metadata: Iterable[tuple[str, object]] = error.trailing_metadata() or ()  # type: ignore[assignment]
    return list(metadata)
