"""One place that turns schema URIs into validation: compiled first, explained on failure."""

from __future__ import annotations

from collections.abc import Mapping

import fastjsonschema

from .compiled import CompiledValidator, compile_validator
from .documents import Schema
from .errors import ContractViolation
from .explain import Explainer
from .locations import Location

__all__ = ["SchemaValidators"]


class SchemaValidators:
    """Validators for any schema of a set of contract documents, compiled on first use.

    Safe to share between threads: at worst two threads compile the same schema once each.
    """

    def __init__(self, documents_by_id: Mapping[str, Schema]) -> None:
        self._documents_by_id = documents_by_id
        self._compiled: dict[str, CompiledValidator] = {}
        self._explainer = Explainer(documents_by_id)

    def compiled(self, uri: str) -> CompiledValidator:
        validator = self._compiled.get(uri)
        if validator is None:
            validator = compile_validator(self._documents_by_id, uri)
            self._compiled[uri] = validator
        return validator

    def check(
        self, uri: str, instance: object, *, root: Location, message_type: str | None
    ) -> None:
        """Raise ``ContractViolation`` naming the failing field if ``instance`` is invalid."""
        try:
            self.compiled(uri)(instance)
        except fastjsonschema.JsonSchemaValueException as error:
            violation = self._explainer.first_violation(
                uri, instance, root=root, message_type=message_type
            )
            raise (violation or _from_compiled(error, root, message_type)) from None

    def is_valid(self, uri: str, instance: object) -> bool:
        try:
            self.compiled(uri)(instance)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    def violations(
        self, uri: str, instance: object, *, root: Location, message_type: str | None
    ) -> list[ContractViolation]:
        """Every violation (empty when valid); slower than ``check``, for reports."""
        if self.is_valid(uri, instance):
            return []
        return self._explainer.violations(uri, instance, root=root, message_type=message_type) or [
            self._compiled_violation(uri, instance, root, message_type)
        ]

    def _compiled_violation(
        self, uri: str, instance: object, root: Location, message_type: str | None
    ) -> ContractViolation:
        try:
            self.compiled(uri)(instance)
        except fastjsonschema.JsonSchemaValueException as error:
            return _from_compiled(error, root, message_type)
        raise AssertionError("the compiled validator accepted a value it had rejected")


def _from_compiled(
    error: fastjsonschema.JsonSchemaValueException, root: Location, message_type: str | None
) -> ContractViolation:
    # Only reached if the two implementations ever disagree; the compiled error path is
    # dotted text, so keys and indices can no longer be told apart.
    return ContractViolation(
        location=(*root, *error.path[1:]),
        message=error.message,
        keyword=error.rule,
        message_type=message_type,
    )
