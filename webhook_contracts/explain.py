"""Finding *where* a value breaks its contract, with ``jsonschema``.

The compiled validators answer "valid or not" fast, but their errors name the parent of a
missing field and lose the difference between keys and indices. When a value is invalid, the
reference implementation walks it again to name each failing field exactly. Only invalid
values pay for this.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, cast

import jsonschema
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .documents import Schema
from .errors import ContractViolation
from .formats import FORMAT_CHECKS
from .locations import Location

__all__ = ["Explainer", "format_checker"]


@cache
def format_checker() -> jsonschema.FormatChecker:
    """A checker that asserts exactly the formats of ``formats.FORMAT_CHECKS``."""
    checker = jsonschema.FormatChecker(formats=())
    for name, check in FORMAT_CHECKS.items():
        checker.checks(name)(_strings_only(check))
    return checker


def _strings_only(check: Callable[[str], bool]) -> Callable[[object], bool]:
    # A format says nothing about non-strings: their type is the "type" keyword's business.
    return lambda value: not isinstance(value, str) or check(value)


class Explainer:
    """Lists the violations of a value against a contract schema, field by field."""

    def __init__(self, documents_by_id: Mapping[str, Schema]) -> None:
        resources: list[tuple[str, Resource[Any]]] = [
            (uri, DRAFT202012.create_resource(document))
            for uri, document in documents_by_id.items()
        ]
        self._registry: Registry[Any] = Registry().with_resources(resources).crawl()
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def validator(self, uri: str) -> jsonschema.protocols.Validator:
        """The ``jsonschema`` validator of the schema at ``uri`` (kept for later failures)."""
        if uri not in self._validators:
            self._validators[uri] = jsonschema.Draft202012Validator(
                {"$ref": uri}, registry=self._registry, format_checker=format_checker()
            )
        return self._validators[uri]

    def violations(
        self, uri: str, instance: object, *, root: Location, message_type: str | None
    ) -> list[ContractViolation]:
        """Every failing field, once each (its first violation), in a stable order."""
        found: dict[Location, ContractViolation] = {}
        for error in self.validator(uri).iter_errors(cast(Any, instance)):
            for violation in _violations_of(error, root=root, message_type=message_type):
                found.setdefault(violation.location, violation)
        return list(found.values())

    def first_violation(
        self, uri: str, instance: object, *, root: Location, message_type: str | None
    ) -> ContractViolation | None:
        """The most relevant violation (``jsonschema.best_match``), or None if valid."""
        error = best_match(self.validator(uri).iter_errors(cast(Any, instance)))
        if error is None:
            return None
        return next(_violations_of(error, root=root, message_type=message_type))


def _violations_of(
    error: ValidationError, *, root: Location, message_type: str | None
) -> Iterator[ContractViolation]:
    location = root + tuple(error.absolute_path)
    keyword = str(error.validator)
    if keyword == "required":
        named = [(name, "is required") for name in _missing(error)]
    elif keyword == "additionalProperties" and error.validator_value is False:
        named = [(name, "is not allowed here") for name in _unexpected(error)]
    else:
        named = []
    if not named:
        yield ContractViolation(
            location=location, message=error.message, keyword=keyword, message_type=message_type
        )
    for name, message in named:
        yield ContractViolation(
            location=(*location, name), message=message, keyword=keyword, message_type=message_type
        )


def _missing(error: ValidationError) -> list[str]:
    if not isinstance(error.instance, dict) or not isinstance(error.validator_value, list):
        return []
    return [name for name in error.validator_value if name not in error.instance]


def _unexpected(error: ValidationError) -> list[str]:
    if not isinstance(error.instance, dict) or not isinstance(error.schema, dict):
        return []
    declared = error.schema.get("properties", {})
    patterns = [re.compile(pattern) for pattern in error.schema.get("patternProperties", {})]
    return sorted(
        key
        for key in error.instance
        if key not in declared and not any(pattern.search(key) for pattern in patterns)
    )
