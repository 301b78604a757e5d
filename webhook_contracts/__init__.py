"""The JSON Schema contracts of the webhooks: load them, validate with them, publish them.

>>> from webhook_contracts import load_registry
>>> contract = load_registry().get("event.claim.created.v1")
>>> contract.validate_payload(payload)  # raises ContractViolation naming the field
"""

from .bundle import bundle
from .compatibility import BreakingChange, Change, check_compatibility
from .contract import Contract
from .directory import CONTRACTS_DIR_ENV, contracts_dir
from .documents import ContractDocuments, InvalidContractFile, load_documents
from .errors import ContractError, ContractViolation, InvalidPattern, UnknownMessageType
from .ids import BASE_URI, schema_id
from .locations import Location, dotted, json_pointer
from .openapi import build_openapi
from .parts import Part
from .patterns import check_pattern, is_pattern, matches
from .registry import Registry, known_message_types, load_registry
from .released import read_release, released_path, write_release

__all__ = [
    "BASE_URI",
    "CONTRACTS_DIR_ENV",
    "BreakingChange",
    "Change",
    "Contract",
    "ContractDocuments",
    "ContractError",
    "ContractViolation",
    "InvalidContractFile",
    "InvalidPattern",
    "Location",
    "Part",
    "Registry",
    "UnknownMessageType",
    "build_openapi",
    "bundle",
    "check_compatibility",
    "check_pattern",
    "contracts_dir",
    "dotted",
    "is_pattern",
    "json_pointer",
    "known_message_types",
    "load_documents",
    "load_registry",
    "matches",
    "read_release",
    "released_path",
    "schema_id",
    "write_release",
]
