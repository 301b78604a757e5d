"""Loading the contracts: lookup by messageType and by pattern, where they are read from,
and the self-contained bundles served to receivers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.contracts.contract_samples import EXAMPLE_TYPE, PUBLISHED_TYPES, valid_payload
from webhook_contracts import (
    CONTRACTS_DIR_ENV,
    ContractViolation,
    InvalidContractFile,
    InvalidPattern,
    Registry,
    UnknownMessageType,
    contracts_dir,
    is_pattern,
    known_message_types,
    load_registry,
    matches,
)
from webhook_contracts.explain import format_checker


def test_known_message_types_are_the_event_files_and_are_read_once() -> None:
    names = {path.stem for path in (contracts_dir() / "events").glob("*.json")}
    assert known_message_types() == names
    assert len(names) == 77
    assert known_message_types() is known_message_types()
    assert load_registry() is load_registry()


def test_an_unknown_message_type_raises_a_clear_lookup_error(registry: Registry) -> None:
    with pytest.raises(UnknownMessageType, match=r"event\.claim\.created\.v9"):
        registry.get("event.claim.created.v9")
    with pytest.raises(LookupError):
        registry.get("event.claim.*")
    assert "event.claim.created.v1" in registry
    assert "event.claim.created.v9" not in registry


def test_a_prefix_pattern_selects_the_types_under_that_prefix_only(registry: Registry) -> None:
    selected = [contract.message_type for contract in registry.matching("event.claim.*")]
    assert selected == [
        "event.claim.created.v1",
        "event.claim.resolved.v1",
        "event.claim.updated.v1",
    ]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", 77),
        ("event.*", 76),
        ("webhook.*", 1),
        ("event.instalmentPlan.*", 8),
        ("event.claim.created.v1", 1),
        ("event.claim.created.v2", 0),
        ("event.claimDebtPayment.*", 2),
    ],
)
def test_patterns_select_as_subscriptions_do(
    registry: Registry, pattern: str, expected: int
) -> None:
    selected = registry.matching(pattern)
    assert len(selected) == expected
    assert all(matches(pattern, contract.message_type) for contract in selected)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "event.claim*",
        "*.v1",
        "event.*.created.v1",
        "event..claim",
        "event.claim.**",
        " event.*",
    ],
)
def test_a_malformed_pattern_is_refused(registry: Registry, pattern: str) -> None:
    assert not is_pattern(pattern)
    with pytest.raises(InvalidPattern):
        registry.matching(pattern)


def test_the_contracts_directory_can_be_chosen(contracts_copy: Path) -> None:
    (contracts_copy / "events" / "event.note.deleted.v1.json").unlink()
    registry = load_registry(contracts_copy)
    assert registry.directory == contracts_copy.resolve()
    assert "event.note.deleted.v1" not in registry
    assert len(registry) == 76


def test_the_contracts_directory_can_be_chosen_from_the_environment(
    contracts_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONTRACTS_DIR_ENV, str(contracts_copy))
    assert contracts_dir() == contracts_copy.resolve()
    monkeypatch.delenv(CONTRACTS_DIR_ENV)
    assert contracts_dir() == Path(__file__).resolve().parents[2] / "contracts"


def test_a_contract_whose_id_does_not_match_its_file_is_refused(contracts_copy: Path) -> None:
    path = contracts_copy / "events" / "event.note.deleted.v1.json"
    path.rename(path.with_name("event.note.removed.v1.json"))
    with pytest.raises(InvalidContractFile, match="must be"):
        load_registry(contracts_copy)


def test_a_contract_that_pins_another_message_type_is_refused(contracts_copy: Path) -> None:
    path = contracts_copy / "events" / "event.note.deleted.v1.json"
    document = json.loads(path.read_text())
    document["$defs"]["details"]["properties"]["messageType"]["const"] = "event.note.created.v1"
    path.write_text(json.dumps(document))
    with pytest.raises(InvalidContractFile, match="must pin"):
        load_registry(contracts_copy)


def test_every_bundle_is_a_self_contained_valid_schema(registry: Registry) -> None:
    for contract in registry:
        bundle = registry.bundle(contract.message_type)
        jsonschema.Draft202012Validator.check_schema(bundle)
        # No registry: every reference must resolve inside the bundle itself.
        validator = jsonschema.Draft202012Validator(bundle, format_checker=format_checker())
        body: dict[str, Any] = {
            "payload": valid_payload(contract.message_type),
            "signature": "c2ln",
            "payloadAsString": "{}",
        }
        validator.validate(body)
        body["payload"]["details"]["messageType"] = "event.other.v1"
        assert not validator.is_valid(body)


def test_a_bundle_rejects_what_its_contract_rejects(registry: Registry) -> None:
    bundle = registry.bundle("event.claim.created.v1")
    validator = jsonschema.Draft202012Validator(bundle, format_checker=format_checker())
    payload = valid_payload("event.claim.created.v1")
    payload["details"]["dueDate"] = "2021-02-30"
    body = {"payload": payload, "signature": "c2ln", "payloadAsString": "{}"}
    assert not validator.is_valid(body)
    with pytest.raises(ContractViolation):
        registry.get("event.claim.created.v1").validate_webhook(body)


def test_examples_come_from_the_published_catalog_only(registry: Registry) -> None:
    with_examples = {contract.message_type for contract in registry if contract.examples}
    published = {name for name, event in PUBLISHED_TYPES.items() if "documentedExample" in event}
    assert with_examples == published == {EXAMPLE_TYPE}
