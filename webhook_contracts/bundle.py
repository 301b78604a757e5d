"""Self-contained contracts: one document that needs no other to be resolved.

This is what ``GET /v1/contracts/{messageType}`` serves. The contract keeps its canonical
``$id``; the documents it references are embedded under ``$defs/<name>.json`` and every
``$ref`` becomes a local JSON pointer (``#/$defs/payload.json/$defs/user``).

The embedded copies name their canonical id in ``$comment`` instead of keeping it as
``$id``: JSON Schema resolves a local ``#/...`` reference against the nearest ``$id``, so an
embedded document with an ``$id`` of its own could not point at its siblings locally. One
schema resource with local references is what every tool reads alike: 2020-12 validators,
Ajv in strict mode, and generators such as json-schema-to-typescript, which resolve JSON
pointers but not embedded ``$id``s (they would try to download them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .documents import ContractDocuments, InvalidContractFile, Schema
from .ids import name_of, schema_id
from .references import referenced_documents, rewrite_refs

__all__ = ["bundle", "embedded_key"]

# Resource keywords that only a document's root may carry.
_ROOT_ONLY = ("$id", "$schema")


def embedded_key(name: str) -> str:
    """Where document ``name`` sits under a bundle's ``$defs``: its file name.

    The suffix keeps shared documents apart from an event's own ``$defs/payload`` and
    ``$defs/details``.
    """
    return f"{name}.json"


def bundle(documents: ContractDocuments, name: str) -> dict[str, Any]:
    """The contract ``name`` with every document it references embedded."""

    def local(ref: str) -> str:
        target = name_of(ref)
        _, _, pointer = ref.partition("#")
        if target == name:
            return "#" + pointer
        return f"#/$defs/{_escaped(embedded_key(target))}{pointer}"

    bundled: dict[str, Any] = rewrite_refs(documents.get(name), local)
    embedded: dict[str, Any] = bundled.setdefault("$defs", {})
    for dependency in referenced_documents(documents, name):
        key = embedded_key(dependency)
        if key in embedded:
            raise InvalidContractFile(f"{name}: $defs/{key} is reserved for the bundle")
        embedded[key] = _embedded(documents.get(dependency), dependency, local)
    return bundled


def _embedded(document: Schema, name: str, local: Callable[[str], str]) -> dict[str, Any]:
    schema: dict[str, Any] = rewrite_refs(document, local)
    for keyword in _ROOT_ONLY:
        schema.pop(keyword, None)
    note = f"Embedded copy of {schema_id(name)}."
    if "$comment" in schema:
        note = f"{note} {schema.pop('$comment')}"
    return {"$comment": note, **schema}


def _escaped(key: str) -> str:
    # RFC 6901: "~" and "/" are escaped in a JSON pointer.
    return key.replace("~", "~0").replace("/", "~1")
