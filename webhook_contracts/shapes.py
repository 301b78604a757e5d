"""Schemas flattened into shapes that can be compared.

A ``Shape`` is what a schema accepts, with ``$ref`` resolved and ``allOf`` merged, in terms
the compatibility check can reason about: the accepted types and values, required and
declared fields, what other fields may be, string/number/array bounds, patterns and formats.
Keywords it cannot reason about (``oneOf``, ``not``...) are kept verbatim as "opaque": any
change to them counts as breaking, which is the safe answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["ALL_TYPES", "ANY", "NEVER", "Shape", "covers_type", "shape_of"]

ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})
LOWER_BOUNDS = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
UPPER_BOUNDS = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")
ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "$defs", "$anchor", "$comment", "$vocabulary", "title",
        "description", "examples", "default", "deprecated", "readOnly", "writeOnly",
        "contentEncoding", "contentMediaType", "contentSchema",
    }
)  # fmt: skip
UNDERSTOOD = frozenset(
    {
        "$ref", "allOf", "type", "const", "enum", "required", "properties",
        "additionalProperties", "items", "pattern", "format", *LOWER_BOUNDS, *UPPER_BOUNDS,
    }
)  # fmt: skip

Resolver = Callable[[str], Any]


@dataclass(frozen=True)
class Shape:
    """What a schema accepts. ``None`` in ``types``, ``values``, ``additional`` and ``items``
    means "anything"."""

    never: bool = False
    types: frozenset[str] | None = None
    values: frozenset[str] | None = None
    required: frozenset[str] = frozenset()
    properties: Mapping[str, Shape] = field(default_factory=lambda: MappingProxyType({}))
    additional: Shape | None = None
    items: Shape | None = None
    patterns: frozenset[str] = frozenset()
    formats: frozenset[str] = frozenset()
    lower: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    upper: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    opaque: frozenset[str] = frozenset()

    def field_shape(self, name: str) -> Shape:
        """What this object accepts as the value of field ``name``."""
        return self.properties.get(name) or self.additional or ANY

    def merge(self, other: Shape) -> Shape:
        """The shape accepting what both accept (``allOf``)."""
        if self.never or other.never:
            return NEVER
        names = self.properties.keys() | other.properties.keys()
        return Shape(
            types=_intersect_types(self.types, other.types),
            values=_intersect(self.values, other.values),
            required=self.required | other.required,
            properties=MappingProxyType(
                {name: self.field_shape(name).merge(other.field_shape(name)) for name in names}
            ),
            additional=_merge_optional(self.additional, other.additional),
            items=_merge_optional(self.items, other.items),
            patterns=self.patterns | other.patterns,
            formats=self.formats | other.formats,
            lower=_tightest(self.lower, other.lower, max),
            upper=_tightest(self.upper, other.upper, min),
            opaque=self.opaque | other.opaque,
        )


ANY = Shape()
NEVER = Shape(never=True)


def covers_type(types: frozenset[str] | None, wanted: str) -> bool:
    """Whether ``types`` accepts values of JSON type ``wanted`` (integers are numbers)."""
    if types is None:
        return True
    return wanted in types or (wanted == "integer" and "number" in types)


def shape_of(schema: object, resolve: Resolver, *, resolving: tuple[str, ...] = ()) -> Shape:
    """Flatten ``schema``; ``resolve`` turns an absolute ``$ref`` into its schema."""
    if schema is True:
        return ANY
    if schema is False:
        return NEVER
    if not isinstance(schema, dict):
        raise TypeError(f"not a schema: {schema!r}")
    shape = _own_shape(schema, resolve, resolving)
    for part in schema.get("allOf", ()):
        shape = shape.merge(shape_of(part, resolve, resolving=resolving))
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in resolving:
            raise ValueError(f"recursive $ref {ref} is beyond the compatibility check")
        shape = shape.merge(shape_of(resolve(ref), resolve, resolving=(*resolving, ref)))
    return shape


def _own_shape(schema: dict[str, Any], resolve: Resolver, resolving: tuple[str, ...]) -> Shape:
    def sub(node: object) -> Shape:
        return shape_of(node, resolve, resolving=resolving)

    additional = schema.get("additionalProperties")
    items = schema.get("items")
    return Shape(
        types=_types(schema.get("type")),
        values=_values(schema),
        required=frozenset(schema.get("required", ())),
        properties=MappingProxyType(
            {name: sub(node) for name, node in schema.get("properties", {}).items()}
        ),
        additional=None if additional is None else sub(additional),
        items=None if items is None else sub(items),
        patterns=frozenset([schema["pattern"]]) if "pattern" in schema else frozenset(),
        formats=frozenset([schema["format"]]) if "format" in schema else frozenset(),
        lower=MappingProxyType({key: schema[key] for key in LOWER_BOUNDS if key in schema}),
        upper=MappingProxyType({key: schema[key] for key in UPPER_BOUNDS if key in schema}),
        opaque=frozenset(
            _canonical({key: value})
            for key, value in schema.items()
            if key not in UNDERSTOOD and key not in ANNOTATIONS and not key.startswith("x-")
        ),
    )


def _types(declared: object) -> frozenset[str] | None:
    if declared is None:
        return None
    if isinstance(declared, str):
        return frozenset([declared])
    return frozenset(str(kind) for kind in declared) if isinstance(declared, list) else None


def _values(schema: dict[str, Any]) -> frozenset[str] | None:
    values = None
    if "enum" in schema:
        values = frozenset(_canonical(value) for value in schema["enum"])
    if "const" in schema:
        values = _intersect(values, frozenset([_canonical(schema["const"])]))
    return values


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _intersect(left: frozenset[str] | None, right: frozenset[str] | None) -> frozenset[str] | None:
    if left is None:
        return right
    if right is None:
        return left
    return left & right


def _intersect_types(
    left: frozenset[str] | None, right: frozenset[str] | None
) -> frozenset[str] | None:
    if left is None or right is None:
        return right if left is None else left
    return frozenset(
        kind for kind in ALL_TYPES if covers_type(left, kind) and covers_type(right, kind)
    )


def _merge_optional(left: Shape | None, right: Shape | None) -> Shape | None:
    if left is None or right is None:
        return right if left is None else left
    return left.merge(right)


def _tightest(
    left: Mapping[str, float], right: Mapping[str, float], pick: Callable[[float, float], float]
) -> Mapping[str, float]:
    merged = dict(left)
    for key, value in right.items():
        merged[key] = pick(merged[key], value) if key in merged else value
    return MappingProxyType(merged)
