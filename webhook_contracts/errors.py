"""Errors raised by the contracts package.

ContractError (ValueError)
 ├── ContractViolation     a value breaks its contract; names the failing field
 ├── UnknownMessageType    no contract has that messageType (also a LookupError)
 └── InvalidPattern        a subscription pattern that is neither exact nor ``prefix.*``
"""

from __future__ import annotations

from .locations import Location, dotted, json_pointer

__all__ = ["ContractError", "ContractViolation", "InvalidPattern", "UnknownMessageType"]


class ContractError(ValueError):
    """Base of the errors of this package."""


class ContractViolation(ContractError):
    """A value does not satisfy its contract.

    ``path`` is dotted from the root of the webhook body (``payload.details.amount``) whatever
    part was validated, so the same field has the same name everywhere; ``pointer`` is the
    JSON-pointer form; ``keyword`` is the JSON Schema keyword that failed (``required``,
    ``type``, ``format``...).
    """

    def __init__(
        self,
        *,
        location: Location,
        message: str,
        keyword: str | None = None,
        message_type: str | None = None,
    ) -> None:
        self.location = location
        self.message = message
        self.keyword = keyword
        self.message_type = message_type
        super().__init__(f"{self.path or '(root)'}: {message}")

    @property
    def path(self) -> str:
        return dotted(self.location)

    @property
    def pointer(self) -> str:
        return json_pointer(self.location)

    def pointer_from(self, root: Location) -> str:
        """The JSON pointer relative to ``root``, e.g. ``/details/amount`` from ``("payload",)``
        for an API whose request body is the payload (RFC 9457 ``errors[].pointer``)."""
        if self.location[: len(root)] != root:
            raise ValueError(f"{self.path} is not under {root}")
        return json_pointer(self.location[len(root) :])


class UnknownMessageType(ContractError, LookupError):
    """No contract exists for this messageType."""

    def __init__(self, message_type: object) -> None:
        self.message_type = message_type
        super().__init__(f"no contract for messageType {message_type!r}")


class InvalidPattern(ContractError):
    """A messageType pattern that is neither an exact type, ``prefix.*`` nor ``*``."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        super().__init__(
            f"invalid messageType pattern {pattern!r}: use an exact type, a prefix ending "
            "in '.*' (event.claim.*) or '*'"
        )
