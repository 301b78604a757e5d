"""Self-contained contracts: one document that needs no other to be resolved.

This is what ``GET /v1/contracts/{messageType}`` serves. The referenced documents are embedded
under ``$defs`` with their own ``$id`` (JSON Schema 2020-12 bundling), so any 2020-12
validator resolves every ``$ref`` inside the bundle without fetching anything.
"""

from __future__ import annotations

import copy
from typing import Any

from .documents import ContractDocuments
from .ids import schema_id
from .references import referenced_documents

__all__ = ["bundle"]


def bundle(documents: ContractDocuments, name: str) -> dict[str, Any]:
    """The contract ``name`` with every document it references embedded."""
    bundled: dict[str, Any] = copy.deepcopy(dict(documents.get(name)))
    embedded = bundled.setdefault("$defs", {})
    for dependency in referenced_documents(documents, name):
        embedded[schema_id(dependency)] = copy.deepcopy(dict(documents.get(dependency)))
    return bundled
