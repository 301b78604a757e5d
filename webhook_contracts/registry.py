"""The registry: every contract under ``contracts/``, by messageType."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .bundle import bundle
from .contract import Contract
from .directory import contracts_dir
from .documents import ContractDocuments, InvalidContractFile, Schema, load_documents
from .errors import ContractViolation, UnknownMessageType
from .ids import schema_id
from .parts import Part
from .patterns import check_pattern, matches
from .validators import SchemaValidators

__all__ = ["Registry", "known_message_types", "load_registry"]


@dataclass(frozen=True, eq=False)
class Registry:
    """Contracts by messageType, sharing one set of documents and compiled validators."""

    directory: Path
    documents: ContractDocuments = field(repr=False)
    message_types: frozenset[str] = field(repr=False)
    _contracts: Mapping[str, Contract] = field(repr=False)
    _validators: SchemaValidators = field(repr=False)

    @classmethod
    def from_documents(cls, documents: ContractDocuments, *, directory: Path) -> Registry:
        validators = SchemaValidators(documents.by_id())
        contracts = {
            name: Contract(name, _checked_event(name, document), validators)
            for name, document in sorted(documents.events.items())
        }
        return cls(
            directory, documents, frozenset(contracts), MappingProxyType(contracts), validators
        )

    def __contains__(self, message_type: object) -> bool:
        return message_type in self._contracts

    def __iter__(self) -> Iterator[Contract]:
        """Contracts in messageType order."""
        return iter(self._contracts.values())

    def __len__(self) -> int:
        return len(self._contracts)

    def get(self, message_type: str) -> Contract:
        try:
            return self._contracts[message_type]
        except (KeyError, TypeError):
            raise UnknownMessageType(message_type) from None

    def matching(self, pattern: str) -> tuple[Contract, ...]:
        """Contracts selected by an exact type, a ``prefix.*`` pattern or ``*``."""
        check_pattern(pattern)
        return tuple(contract for contract in self if matches(pattern, contract.message_type))

    def contract_for(self, instance: object, *, part: Part = Part.PAYLOAD) -> Contract:
        """The contract named by the messageType inside ``instance``.

        An instance whose envelope is too broken to carry a messageType gets the
        ``ContractViolation`` of the shared envelope schema.
        """
        message_type = _message_type_in(instance, part)
        if message_type is None:
            self._validators.check(
                schema_id(part.value), instance, root=part.location, message_type=None
            )
            raise ContractViolation(
                location=(*Part.DETAILS.location, "messageType"), message="is required"
            )
        return self.get(message_type)

    def validate(self, instance: object, *, part: Part = Part.PAYLOAD) -> Contract:
        """Validate against the contract of its own messageType; returns that contract."""
        contract = self.contract_for(instance, part=part)
        contract.validate(instance, part=part)
        return contract

    def validate_payload(self, payload: object) -> Contract:
        return self.validate(payload, part=Part.PAYLOAD)

    def validate_webhook(self, body: object) -> Contract:
        return self.validate(body, part=Part.WEBHOOK)

    def bundle(self, message_type: str) -> dict[str, Any]:
        """The self-contained contract of ``message_type`` (what the dispatcher serves)."""
        return bundle(self.documents, self.get(message_type).message_type)

    def compile_all(self) -> None:
        """Compile every validator now (a service calls this at start-up, not per request)."""
        for contract in self._contracts.values():
            contract.compile()


@cache
def _load_registry(directory: Path) -> Registry:
    return Registry.from_documents(load_documents(directory), directory=directory)


def load_registry(directory: Path | None = None) -> Registry:
    """The registry of ``directory`` (default: ``contracts_dir()``), loaded once per directory."""
    return _load_registry((directory or contracts_dir()).resolve())


def known_message_types(directory: Path | None = None) -> frozenset[str]:
    """Every messageType that has a contract."""
    return load_registry(directory).message_types


def _message_type_in(instance: object, part: Part) -> str | None:
    node = instance
    for key in Part.DETAILS.location[len(part.location) :]:
        node = node.get(key) if isinstance(node, dict) else None
    message_type = node.get("messageType") if isinstance(node, dict) else None
    return message_type if isinstance(message_type, str) else None


def _checked_event(name: str, document: Schema) -> Schema:
    node: object = document
    for key in ("$defs", "details", "properties", "messageType", "const"):
        node = node.get(key) if isinstance(node, Mapping) else None
    if node != name:
        raise InvalidContractFile(
            f"events/{name}.json must pin details.messageType to {name!r} (found {node!r})"
        )
    return document
