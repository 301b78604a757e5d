"""``$ref`` handling shared by bundling, OpenAPI generation and the consistency checks."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from .documents import ContractDocuments
from .ids import name_of

__all__ = ["iter_refs", "referenced_documents", "rewrite_refs"]


def iter_refs(node: object) -> Iterator[str]:
    """Every ``$ref`` value in a schema, depth first."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for key, value in node.items():
            if key not in ("examples", "const", "enum", "default"):
                yield from iter_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_refs(item)


def rewrite_refs(node: Any, rewrite: Callable[[str], str]) -> Any:
    """A deep copy of ``node`` whose ``$ref`` values went through ``rewrite``."""
    if isinstance(node, dict):
        return {
            key: (
                rewrite(value)
                if key == "$ref" and isinstance(value, str)
                else copy.deepcopy(value)
                if key in ("examples", "const", "enum", "default")
                else rewrite_refs(value, rewrite)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [rewrite_refs(item, rewrite) for item in node]
    return node


def referenced_documents(documents: ContractDocuments, name: str) -> list[str]:
    """Names of the documents ``name`` refers to, directly or not, in first-reached order."""
    reached: list[str] = []
    pending = [name]
    while pending:
        current = pending.pop(0)
        for ref in iter_refs(documents.get(current)):
            target = name_of(ref)
            if target != name and target not in reached:
                reached.append(target)
                pending.append(target)
    return reached
