"""Schema ids: every contract document is named by an absolute URI under one base.

The ids are names, not locations: ``$ref`` resolves them from the local files, never over
the network (a served bundle turns them into local ``#/$defs/...`` pointers). The path part
mirrors the HTTP surface, so the document named ``.../v1/contracts/event.claim.created.v1``
is the one the dispatcher serves at ``GET /v1/contracts/event.claim.created.v1``.
"""

from __future__ import annotations

__all__ = ["BASE_URI", "JSON_SCHEMA_DIALECT", "name_of", "schema_id"]

BASE_URI = "https://webhooks.example/v1/contracts/"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_id(name: str) -> str:
    """The ``$id`` of the contract document called ``name`` (a messageType or a shared name)."""
    return BASE_URI + name


def name_of(uri: str) -> str:
    """The document name in a schema id or ``$ref`` (``...#/$defs/x`` keeps only the name)."""
    document = uri.split("#", 1)[0]
    if not document.startswith(BASE_URI):
        raise ValueError(f"{uri!r} is not a contract id (they start with {BASE_URI})")
    return document.removeprefix(BASE_URI)
