"""The parts of a webhook body that can be validated on their own."""

from __future__ import annotations

from enum import StrEnum

from .ids import schema_id
from .locations import Location

__all__ = ["Part"]


class Part(StrEnum):
    """A part of the body: the whole body, its ``payload``, or the payload's ``details``."""

    WEBHOOK = "webhook"
    PAYLOAD = "payload"
    DETAILS = "details"

    @property
    def location(self) -> Location:
        """Where this part sits in the body; error paths start here."""
        return _LOCATIONS[self]

    def schema_uri(self, message_type: str) -> str:
        """The URI of the schema of this part in the contract of ``message_type``."""
        if self is Part.WEBHOOK:
            return schema_id(message_type)
        return f"{schema_id(message_type)}#/$defs/{self.value}"


_LOCATIONS: dict[Part, Location] = {
    Part.WEBHOOK: (),
    Part.PAYLOAD: ("payload",),
    Part.DETAILS: ("payload", "details"),
}
