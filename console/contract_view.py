"""A contract's fields as table rows: pure functions from a JSON Schema to what a page shows.

The console reads the self-contained form of a contract (what the registry's `bundle`
gives and the dispatcher serves), where every `$ref` is a local JSON pointer. A field is
drawn from everything that shapes it: the schema at its place, what its `$ref` points at
and every `allOf` branch, the nearer one winning for annotations (an event's own
description of `amount` over the shared type's). Nested objects and the objects in arrays
become rows of their own, with dotted paths from the root (`payload.details.amount`,
`payload.details.items[].name`): the paths that validation errors name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from webhook_contracts.locations import pointer_tokens

__all__ = ["FieldRow", "constraints", "field_rows", "resolve", "type_name"]

Schema = Mapping[str, Any]

# How deep the rows go: a guard against schemas too deep for a table to be of use.
MAX_DEPTH = 12
# Keywords that say how a node combines with others, not what it constrains.
_STRUCTURE = frozenset({"$ref", "allOf", "properties", "required", "$defs", "$id", "$schema"})
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


@dataclass(frozen=True)
class FieldRow:
    """One field of a contract, as a table row shows it."""

    path: str
    type: str
    required: bool
    description: str
    constraints: tuple[str, ...]
    depth: int


@dataclass
class _Shape:
    """A node with its `$ref` and `allOf` folded in: the nearest keyword of each name, every
    property's schemas (nearest first), the required names, and the refs followed so far."""

    keywords: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, list[Schema]] = field(default_factory=dict)
    required: set[str] = field(default_factory=set)
    refs: frozenset[str] = frozenset()

    def absorb(self, other: _Shape) -> None:
        """Adds `other` beneath this shape: its keywords only where this one has none."""
        for name, value in other.keywords.items():
            self.keywords.setdefault(name, value)
        for name, schemas in other.properties.items():
            self.properties.setdefault(name, []).extend(schemas)
        self.required |= other.required
        self.refs |= other.refs


def field_rows(schema: Schema, *, root: Schema | None = None) -> list[FieldRow]:
    """Every field of `schema`, depth first, in declaration order (the nearest first).

    `root` is the document that local `$ref`s point into; `schema` itself by default.
    """
    shape = _shape(schema, root if root is not None else schema, frozenset())
    return list(_object_rows(shape, root if root is not None else schema, prefix="", depth=0))


def resolve(ref: str, root: Schema) -> Schema | None:
    """The node a local `$ref` (`#/$defs/types.json/$defs/date`) names; None if it names none.

    References to other documents are not followed: a bundle has none.
    """
    if not ref.startswith("#"):
        return None
    node: object = root
    # A URI fragment: percent-decoded first, then read as a JSON pointer.
    for token in pointer_tokens(unquote(ref[1:])):
        node = _child(node, token)
    return node if isinstance(node, Mapping) else None


def type_name(keywords: Mapping[str, Any]) -> str:
    """What a node holds: its `type` (`string or null`), else what its `const`, `enum`,
    `properties` or `items` imply, else `any`."""
    declared = keywords.get("type")
    if isinstance(declared, str):
        return declared
    if isinstance(declared, list) and declared:
        return " or ".join(str(name) for name in declared)
    return _implied_type(keywords)


def constraints(keywords: Mapping[str, Any]) -> tuple[str, ...]:
    """The rules a node sets on its value, in words: `format date`, `at most 3 characters`."""
    found: list[str] = []
    for describe in _DESCRIBERS:
        found.extend(describe(keywords))
    return tuple(found)


def _object_rows(shape: _Shape, root: Schema, *, prefix: str, depth: int) -> Iterator[FieldRow]:
    if depth >= MAX_DEPTH:
        return
    for name, schemas in shape.properties.items():
        child = _combined(schemas, root, shape.refs)
        path = f"{prefix}{name}"
        yield _row(child, path, required=name in shape.required, depth=depth)
        yield from _nested_rows(child, root, path=path, depth=depth + 1)


def _nested_rows(shape: _Shape, root: Schema, *, path: str, depth: int) -> Iterator[FieldRow]:
    """The rows inside a field: an object's fields, or the fields of an array's objects."""
    if _is_recursive(shape):
        return
    if shape.properties:
        yield from _object_rows(shape, root, prefix=f"{path}.", depth=depth)
        return
    items = shape.keywords.get("items")
    if isinstance(items, Mapping):
        item = _shape(items, root, shape.refs)
        if item.properties and not _is_recursive(item):
            yield from _object_rows(item, root, prefix=f"{path}[].", depth=depth)


def _row(shape: _Shape, path: str, *, required: bool, depth: int) -> FieldRow:
    keywords = dict(shape.keywords)
    if shape.properties:
        keywords.setdefault("type", "object")
    return FieldRow(
        path=path,
        type=_display_type(keywords),
        required=required,
        description=str(keywords.get("description", "")),
        constraints=constraints(keywords) + _item_constraints(keywords),
        depth=depth,
    )


def _display_type(keywords: Mapping[str, Any]) -> str:
    """`array of string` for an array whose items have a type; the plain type otherwise."""
    name = type_name(keywords)
    items = keywords.get("items")
    if name == "array" and isinstance(items, Mapping):
        item_type = type_name(items)
        return "array" if item_type == "any" else f"array of {item_type}"
    return name


def _item_constraints(keywords: Mapping[str, Any]) -> tuple[str, ...]:
    """What an array of plain values asks of each value (`each: format date`)."""
    items = keywords.get("items")
    if not isinstance(items, Mapping) or "properties" in items:
        return ()
    return tuple(f"each: {rule}" for rule in constraints(items))


def _shape(node: Schema, root: Schema, refs: frozenset[str]) -> _Shape:
    """`node` with its `$ref` target and `allOf` branches folded in, nearest first."""
    ref = node.get("$ref")
    if isinstance(ref, str):
        return _referenced(node, ref, root, refs)
    shape = _own_shape(node, refs)
    for branch in node.get("allOf", ()):
        if isinstance(branch, Mapping):
            shape.absorb(_shape(branch, root, refs))
    return shape


def _referenced(node: Schema, ref: str, root: Schema, refs: frozenset[str]) -> _Shape:
    """A node with a `$ref`: its own keywords (annotations, in practice) over the target's.

    A reference already followed on the way here is a recursive schema: it is marked, not
    followed again. One that resolves to nothing is kept as a keyword, to be named.
    """
    siblings = {name: value for name, value in node.items() if name != "$ref"}
    shape = _shape(siblings, root, refs)
    target = resolve(ref, root)
    if ref in refs:
        shape.keywords.setdefault("$recursive", ref)
    elif target is None:
        shape.keywords.setdefault("$unresolved", ref)
    else:
        shape.absorb(_shape(target, root, refs | {ref}))
    return shape


def _own_shape(node: Schema, refs: frozenset[str]) -> _Shape:
    properties = node.get("properties", {})
    return _Shape(
        keywords={name: value for name, value in node.items() if name not in _STRUCTURE},
        properties={
            name: [schema] for name, schema in properties.items() if isinstance(schema, Mapping)
        },
        required={name for name in node.get("required", ()) if isinstance(name, str)},
        refs=refs,
    )


def _combined(schemas: Sequence[Schema], root: Schema, refs: frozenset[str]) -> _Shape:
    """One field declared in several places (an event and the envelope it extends)."""
    shape = _Shape(refs=refs)
    for schema in schemas:
        shape.absorb(_shape(schema, root, refs))
    return shape


def _is_recursive(shape: _Shape) -> bool:
    return "$recursive" in shape.keywords


def _implied_type(keywords: Mapping[str, Any]) -> str:
    if "const" in keywords:
        return _json_type(keywords["const"])
    enum = keywords.get("enum")
    if isinstance(enum, list) and enum:
        return " or ".join(dict.fromkeys(_json_type(value) for value in enum))
    for alternatives in ("oneOf", "anyOf"):
        branches = keywords.get(alternatives)
        if isinstance(branches, list) and branches:
            names = (type_name(b) for b in branches if isinstance(b, Mapping))
            return " or ".join(dict.fromkeys(names))
    if "items" in keywords:
        return "array"
    return "any"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "any")


def _child(node: object, token: str) -> object:
    if isinstance(node, Mapping):
        return node.get(token)
    if isinstance(node, list) and token.isdigit() and int(token) < len(node):
        return node[int(token)]
    return None


def _literal(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _fixed_values(keywords: Mapping[str, Any]) -> list[str]:
    if "const" in keywords:
        return [f"equals {_literal(keywords['const'])}"]
    enum = keywords.get("enum")
    if isinstance(enum, list):
        return ["one of " + ", ".join(_literal(value) for value in enum)]
    return []


def _text_rules(keywords: Mapping[str, Any]) -> list[str]:
    found = [f"format {keywords['format']}"] if "format" in keywords else []
    if "pattern" in keywords:
        found.append(f"pattern {keywords['pattern']}")
    return found + _bounds(keywords, "minLength", "maxLength", "characters")


def _bounds(keywords: Mapping[str, Any], low: str, high: str, unit: str) -> list[str]:
    """`exactly 3 characters` when both bounds agree; `at least`/`at most` otherwise."""
    least, most = keywords.get(low), keywords.get(high)
    if least is not None and least == most:
        return [f"exactly {_count(least, unit)}"]
    found = [] if least is None else [f"at least {_count(least, unit)}"]
    return found + ([] if most is None else [f"at most {_count(most, unit)}"])


def _count(number: object, unit: str) -> str:
    """`1 character`, `3 characters`."""
    return f"{number} {unit.removesuffix('s') if number == 1 else unit}"


def _number_rules(keywords: Mapping[str, Any]) -> list[str]:
    signs = (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
        ("multipleOf", "multiple of"),
    )
    return [f"{sign} {keywords[name]}" for name, sign in signs if name in keywords]


def _array_rules(keywords: Mapping[str, Any]) -> list[str]:
    found = _bounds(keywords, "minItems", "maxItems", "items")
    return found + (["no repeated items"] if keywords.get("uniqueItems") is True else [])


def _object_rules(keywords: Mapping[str, Any]) -> list[str]:
    others = keywords.get("additionalProperties")
    if others is False:
        return ["no other fields"]
    if isinstance(others, Mapping):
        return [f"other fields: {type_name(others)}"]
    return []


def _notes(keywords: Mapping[str, Any]) -> list[str]:
    found = [f"default {_literal(keywords['default'])}"] if "default" in keywords else []
    if keywords.get("deprecated") is True:
        found.append("deprecated")
    if "$recursive" in keywords:
        found.append(f"recursive: the shape of {keywords['$recursive']}")
    if "$unresolved" in keywords:
        found.append(f"defined in {keywords['$unresolved']}")
    return found


_DESCRIBERS = (
    _fixed_values,
    _text_rules,
    _number_rules,
    _array_rules,
    _object_rules,
    _notes,
)
