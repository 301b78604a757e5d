"""What a failed call says about a form: its field violations, by the form's field names."""

from __future__ import annotations

import re
from typing import cast

import grpc

from service_common.status_details import field_violations

__all__ = ["field_errors", "form_field"]

_INDEX = re.compile(r"\[\d+\]")


def form_field(field: str, *, prefix: str = "subscription.") -> str:
    """`subscription.message_types[2]` as the form's `message_types`."""
    return _INDEX.sub("", field.removeprefix(prefix)).split(".")[0]


def field_errors(error: grpc.aio.AioRpcError, *, prefix: str = "subscription.") -> dict[str, str]:
    """Each form field's first violation; a call with none names the whole form (``)."""
    errors: dict[str, str] = {}
    for field, description in field_violations(cast(grpc.Call, error)):
        errors.setdefault(form_field(field, prefix=prefix), description)
    if not errors:
        errors[""] = error.details() or error.code().name
    return errors
