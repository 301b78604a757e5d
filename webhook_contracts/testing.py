"""Hypothesis strategies that generate values from the contracts, for property tests.

Needs the test dependencies (``hypothesis``, ``hypothesis-jsonschema``); nothing else in the
package imports this module.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from functools import cache
from typing import Any

from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from hypothesis_jsonschema import from_schema

from .ids import name_of
from .locations import pointer_tokens
from .parts import Part
from .registry import Registry, load_registry

__all__ = ["dereferenced", "details", "payloads", "portable_json", "timestamps"]

# Beyond these, JSON numbers stop being portable (and the canonical serialiser refuses them).
_INT_RANGE = (-(2**63), 2**64 - 1)
_ANNOTATIONS = ("$id", "$schema", "$defs", "examples", "title", "description", "$comment")
_SCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas")
_VALUES = ("const", "enum", "default", "required")


def timestamps() -> st.SearchStrategy[str]:
    """UTC instants with milliseconds and a Z, as the contracts want them."""
    return st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda moment: moment.replace(tzinfo=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    )


def payloads(message_type: str, *, registry: Registry | None = None) -> st.SearchStrategy[Any]:
    """Valid payloads of ``message_type`` (details, messageId, timestamp, maybe user)."""
    return _strategy(registry or load_registry(), message_type, Part.PAYLOAD)


def details(message_type: str, *, registry: Registry | None = None) -> st.SearchStrategy[Any]:
    """Valid details of ``message_type``."""
    return _strategy(registry or load_registry(), message_type, Part.DETAILS)


def portable_json(value: object) -> bool:
    """True when every integer fits in 64 bits (arbitrary generators can go beyond)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return _INT_RANGE[0] <= value <= _INT_RANGE[1]
    if isinstance(value, dict):
        return all(portable_json(item) for item in value.values())
    if isinstance(value, list):
        return all(portable_json(item) for item in value)
    return True


def dereferenced(registry: Registry, uri: str) -> dict[str, Any]:
    """The schema at ``uri`` with every ``$ref`` replaced by what it points to.

    Generators that cannot follow references across documents take this form.
    """
    inlined: dict[str, Any] = _inline(_resolve(registry, uri), registry)
    return inlined


@cache
def _strategy(registry: Registry, message_type: str, part: Part) -> st.SearchStrategy[Any]:
    schema = dereferenced(registry, part.schema_uri(registry.get(message_type).message_type))
    with warnings.catch_warnings():
        # Replacing the standard date-time generator is the point: the contracts want one
        # precise shape of it.
        warnings.simplefilter("ignore", HypothesisWarning)
        strategy: st.SearchStrategy[Any] = from_schema(
            schema, custom_formats={"date-time": timestamps()}
        )
    return strategy.filter(portable_json)


def _resolve(registry: Registry, uri: str) -> Any:
    node: Any = registry.documents.get(name_of(uri))
    _, _, pointer = uri.partition("#")
    for key in pointer_tokens(pointer):
        node = node[key]
    return node


def _inline(node: Any, registry: Registry) -> Any:
    if not isinstance(node, dict):
        return node
    inlined: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS or key == "$ref":
            continue
        if key in _SCHEMA_MAPS:
            inlined[key] = {name: _inline(schema, registry) for name, schema in value.items()}
        elif key in _VALUES or not isinstance(value, dict | list):
            inlined[key] = value
        elif isinstance(value, list):
            inlined[key] = [_inline(item, registry) for item in value]
        else:
            inlined[key] = _inline(value, registry)
    if isinstance(node.get("$ref"), str):
        target = _inline(_resolve(registry, node["$ref"]), registry)
        inlined["allOf"] = [*inlined.get("allOf", []), target]
    return inlined
