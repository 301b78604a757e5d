"""One event type's contract."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .documents import Schema
from .errors import ContractViolation
from .parts import Part
from .validators import SchemaValidators

__all__ = ["Contract"]


@dataclass(frozen=True, eq=False)
class Contract:
    """The contract of one messageType: its schema and its validators.

    Every ``validate_*`` method raises ``ContractViolation`` whose ``path`` is dotted from the
    root of the webhook body, whichever part is validated: a bad amount is
    ``payload.details.amount`` for ``validate_details`` as for ``validate_webhook``.
    """

    message_type: str
    schema: Schema = field(repr=False)
    _validators: SchemaValidators = field(repr=False)

    @property
    def title(self) -> str:
        return str(self.schema.get("title", self.message_type))

    @property
    def description(self) -> str:
        return str(self.schema.get("description", ""))

    @property
    def examples(self) -> tuple[Mapping[str, Any], ...]:
        """Documented webhook bodies of this type (most types have none)."""
        return tuple(self.schema.get("examples", ()))

    def schema_uri(self, part: Part = Part.WEBHOOK) -> str:
        return part.schema_uri(self.message_type)

    def validate(self, instance: object, *, part: Part) -> None:
        self._validators.check(
            part.schema_uri(self.message_type),
            instance,
            root=part.location,
            message_type=self.message_type,
        )

    def validate_webhook(self, body: object) -> None:
        """A whole delivered body: payload, signature, payloadAsString."""
        self.validate(body, part=Part.WEBHOOK)

    def validate_payload(self, payload: object) -> None:
        """A payload: details, messageId, timestamp and the optional user."""
        self.validate(payload, part=Part.PAYLOAD)

    def validate_details(self, details: object) -> None:
        self.validate(details, part=Part.DETAILS)

    def is_valid(self, instance: object, *, part: Part = Part.PAYLOAD) -> bool:
        return self._validators.is_valid(part.schema_uri(self.message_type), instance)

    def violations(self, instance: object, *, part: Part = Part.PAYLOAD) -> list[ContractViolation]:
        """All violations, each naming one field; empty when ``instance`` is valid."""
        return self._validators.violations(
            part.schema_uri(self.message_type),
            instance,
            root=part.location,
            message_type=self.message_type,
        )

    def compile(self) -> None:
        """Compile every part now rather than on first use."""
        for part in Part:
            self._validators.compiled(part.schema_uri(self.message_type))
