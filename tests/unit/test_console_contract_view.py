"""The console's contract table: a JSON Schema's fields as rows, refs and allOf folded in."""

from __future__ import annotations

from typing import Any

import pytest

from console.contract_view import FieldRow, constraints, field_rows, resolve, type_name
from webhook_contracts import load_registry


def by_path(rows: list[FieldRow]) -> dict[str, FieldRow]:
    return {row.path: row for row in rows}


def test_nested_objects_are_dotted_paths_with_their_required_fields() -> None:
    schema = {
        "type": "object",
        "required": ["details"],
        "properties": {
            "details": {
                "type": "object",
                "required": ["amount"],
                "properties": {
                    "amount": {"type": "integer", "description": "In cents.", "minimum": 0},
                    "note": {"type": "string"},
                },
            }
        },
    }
    rows = field_rows(schema)
    assert [row.path for row in rows] == ["details", "details.amount", "details.note"]
    amount = by_path(rows)["details.amount"]
    assert (amount.type, amount.required, amount.description) == ("integer", True, "In cents.")
    assert amount.constraints == ("≥ 0",)
    assert amount.depth == 1
    assert by_path(rows)["details.note"].required is False


def test_arrays_of_objects_flatten_under_brackets() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["sku"],
                    "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+$"}},
                },
            }
        },
    }
    rows = by_path(field_rows(schema))
    assert rows["items"].type == "array of object"
    assert rows["items"].constraints == ("at least 1 item",)
    assert rows["items[].sku"].required is True
    assert rows["items[].sku"].constraints == ("pattern ^[A-Z]+$",)


def test_an_array_of_plain_values_says_what_each_must_be() -> None:
    schema = {
        "properties": {"days": {"type": "array", "items": {"type": "string", "format": "date"}}}
    }
    [row] = field_rows(schema)
    assert row.type == "array of string"
    assert row.constraints == ("each: format date",)


def test_local_refs_resolve_and_the_nearer_description_wins() -> None:
    schema = {
        "type": "object",
        "properties": {
            "amount": {"description": "Claim amount.", "$ref": "#/$defs/types.json/$defs/money"}
        },
        "$defs": {
            "types.json": {
                "$defs": {"money": {"type": "integer", "description": "Minor units.", "minimum": 1}}
            }
        },
    }
    [row] = field_rows(schema)
    assert (row.path, row.type, row.description) == ("amount", "integer", "Claim amount.")
    assert row.constraints == ("≥ 1",)


def test_all_of_branches_merge_properties_and_required_names() -> None:
    schema = {
        "type": "object",
        "allOf": [{"$ref": "#/$defs/base"}],
        "required": ["kind"],
        "properties": {"kind": {"const": "claim"}, "extra": {"type": "boolean"}},
        "$defs": {
            "base": {
                "type": "object",
                "required": ["id"],
                "additionalProperties": False,
                "properties": {
                    "kind": {"type": "string", "description": "What it is."},
                    "id": {"type": "string"},
                },
            }
        },
    }
    rows = field_rows(schema)
    assert [row.path for row in rows] == ["kind", "extra", "id"]
    kind = by_path(rows)["kind"]
    assert (kind.type, kind.description, kind.required) == ("string", "What it is.", True)
    assert kind.constraints == ('equals "claim"',)
    assert by_path(rows)["id"].required is True


def test_a_recursive_schema_stops_where_it_repeats() -> None:
    schema = {
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "child": {"$ref": "#/$defs/node"},
                },
            }
        },
    }
    rows = by_path(field_rows(schema))
    assert list(rows) == ["name", "child"]
    assert rows["child"].constraints == ("recursive: the shape of #/$defs/node",)


def test_a_reference_outside_the_document_is_named_not_followed() -> None:
    schema = {"properties": {"when": {"$ref": "https://example.com/types#/$defs/date"}}}
    [row] = field_rows(schema)
    assert row.type == "any"
    assert row.constraints == ("defined in https://example.com/types#/$defs/date",)


@pytest.mark.parametrize(
    ("ref", "found"),
    [
        ("#", {"a/b": {"x": 1}, "t~": [{"y": 2}]}),
        ("#/a~1b", {"x": 1}),
        ("#/t~0/0", {"y": 2}),
        ("#/a%7E1b", {"x": 1}),
        ("#/missing", None),
        ("#/t~0/7", None),
        ("other.json#/a~1b", None),
    ],
)
def test_resolve_reads_json_pointers(ref: str, found: object) -> None:
    root: dict[str, Any] = {"a/b": {"x": 1}, "t~": [{"y": 2}]}
    assert resolve(ref, root) == found


@pytest.mark.parametrize(
    ("keywords", "name"),
    [
        ({"type": "string"}, "string"),
        ({"type": ["string", "null"]}, "string or null"),
        ({"const": 3}, "integer"),
        ({"const": True}, "boolean"),
        ({"enum": ["a", None]}, "string or null"),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "string or integer"),
        ({"items": {}}, "array"),
        ({}, "any"),
    ],
)
def test_type_name(keywords: dict[str, Any], name: str) -> None:
    assert type_name(keywords) == name


@pytest.mark.parametrize(
    ("keywords", "said"),
    [
        ({"enum": ["EUR", "USD"]}, ('one of "EUR", "USD"',)),
        ({"minLength": 3, "maxLength": 3}, ("exactly 3 characters",)),
        ({"minLength": 1, "maxLength": 64}, ("at least 1 character", "at most 64 characters")),
        ({"exclusiveMinimum": 0, "maximum": 10}, ("> 0", "≤ 10")),
        ({"maxItems": 5, "uniqueItems": True}, ("at most 5 items", "no repeated items")),
        ({"additionalProperties": {"type": "string"}}, ("other fields: string",)),
        ({"default": "x", "deprecated": True}, ('default "x"', "deprecated")),
        ({"type": "string"}, ()),
    ],
)
def test_constraints_in_words(keywords: dict[str, Any], said: tuple[str, ...]) -> None:
    assert constraints(keywords) == said


def test_a_published_contract_reads_from_the_body_down() -> None:
    registry = load_registry()
    rows = by_path(field_rows(registry.bundle("event.claim.created.v1")))
    assert list(rows)[:3] == ["payload", "payload.details", "payload.details.messageType"]
    assert {"signature", "payloadAsString", "payload.user.poolId"} <= set(rows)
    amount = rows["payload.details.amount"]
    assert (amount.type, amount.required) == ("integer", True)
    assert amount.description == "Claim amount in minor units, without fees."
    currency = rows["payload.details.currency"]
    assert currency.constraints == ("pattern ^[A-Z]{3}$", "exactly 3 characters")
    assert rows["payload.details.messageType"].constraints[0] == 'equals "event.claim.created.v1"'
    assert rows["payload.user"].required is False
    assert rows["payload.user.id"].required is True
    assert rows["payload"].constraints == ("no other fields",)


def test_every_published_contract_has_rows() -> None:
    registry = load_registry()
    for contract in registry:
        paths = {row.path for row in field_rows(registry.bundle(contract.message_type))}
        assert "payload.details.messageType" in paths, contract.message_type
