"""The contract files, read from disk into JSON documents keyed by name."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .directory import EVENTS_SUBDIR
from .errors import ContractError
from .ids import schema_id

__all__ = ["ContractDocuments", "InvalidContractFile", "Schema", "load_documents"]

Schema = Mapping[str, Any]


class InvalidContractFile(ContractError):
    """A file under ``contracts/`` is not a well-formed contract document."""


@dataclass(frozen=True)
class ContractDocuments:
    """Every contract document: the shared ones (``webhook``, ``payload``...) and one per event.

    Documents are shared, not copied: treat them as read-only.
    """

    shared: Mapping[str, Schema]
    events: Mapping[str, Schema]

    def __iter__(self) -> Iterator[tuple[str, Schema]]:
        """``(name, document)`` for every document, shared ones first."""
        yield from self.shared.items()
        yield from self.events.items()

    def by_id(self) -> dict[str, Schema]:
        return {schema_id(name): document for name, document in self}

    def get(self, name: str) -> Schema:
        document = self.shared.get(name) or self.events.get(name)
        if document is None:
            raise KeyError(name)
        return document


def load_documents(directory: Path) -> ContractDocuments:
    """Read ``directory/*.json`` (shared documents) and ``directory/events/*.json``."""
    if not directory.is_dir():
        raise InvalidContractFile(f"no contracts directory at {directory}")
    shared = _read_all(directory.glob("*.json"))
    events = _read_all((directory / EVENTS_SUBDIR).glob("*.json"))
    if clash := shared.keys() & events.keys():
        raise InvalidContractFile(f"names used by both shared and event contracts: {clash}")
    return ContractDocuments(shared=MappingProxyType(shared), events=MappingProxyType(events))


def _read_all(files: Iterable[Path]) -> dict[str, Schema]:
    return {path.stem: _read(path) for path in sorted(files)}


def _read(path: Path) -> Schema:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidContractFile(f"{path}: {error}") from error
    if not isinstance(document, dict):
        raise InvalidContractFile(f"{path}: a contract is a JSON object")
    if document.get("$id") != schema_id(path.stem):
        raise InvalidContractFile(
            f"{path}: $id must be {schema_id(path.stem)!r} (the file name is the contract name)"
        )
    return document
