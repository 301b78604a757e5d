"""What the contracts accept and reject, checked against the published documentation, and
how a rejection names the failing field."""

from __future__ import annotations

import pytest

from tests.contracts.contract_samples import (
    EXAMPLE_TYPE,
    PUBLISHED_TYPES,
    UNDOCUMENTED_TYPE,
    documented_fields,
    valid_payload,
)
from webhook_contracts import ContractViolation, Part, Registry, UnknownMessageType
from webhook_receiver import payload_as_string

COMMON_IDENTIFIERS = ("accountReference", "claimRef", "receeveClaimRef", "externalDebtorRef")


def wrong_values(documented_type: str) -> list[object]:
    """Values that break a field documented as ``documented_type`` (the catalog's wording)."""
    if documented_type.startswith("integer"):
        return ["50100", 501.5, True, None]
    if "^[A-Z]{3}$" in documented_type:
        return ["eur", "EURO", "EU", "EUR\n", 978]
    if "date (YYYY-MM-DD)" in documented_type:
        return ["2021-02-30", "30.11.2021", "2021-11-30T00:00:00Z", 20211130]
    if documented_type.startswith("string"):
        return [42, None, ["CLAIM"], {"id": "CLAIM"}]
    raise AssertionError(f"no wrong values for {documented_type!r}")


def documented_required_fields() -> list[tuple[str, str]]:
    return [
        (name, field)
        for name, event in PUBLISHED_TYPES.items()
        for field in event.get("documentedDetails", {}).get("types", {})
    ]


def rejection(registry: Registry, message_type: str, payload: object) -> ContractViolation:
    with pytest.raises(ContractViolation) as raised:
        registry.get(message_type).validate_payload(payload)
    return raised.value


# Documented examples


def test_the_documented_example_validates_as_published(registry: Registry) -> None:
    published = PUBLISHED_TYPES[EXAMPLE_TYPE]["documentedExample"]
    contract = registry.get(EXAMPLE_TYPE)
    (example,) = contract.examples
    assert example["payload"] == published["payload"]
    assert example["signature"] == published["signature"]
    contract.validate_payload(published["payload"])
    contract.validate_details(published["payload"]["details"])


def test_the_completed_example_is_a_valid_body_whose_text_is_its_payload(
    registry: Registry,
) -> None:
    contract = registry.get(EXAMPLE_TYPE)
    (example,) = contract.examples
    contract.validate_webhook(example)
    assert example["payloadAsString"] == payload_as_string(example["payload"])


def test_a_body_without_payload_as_string_is_rejected_as_the_wire_format_requires(
    registry: Registry,
) -> None:
    published = PUBLISHED_TYPES[EXAMPLE_TYPE]["documentedExample"]
    with pytest.raises(ContractViolation) as raised:
        registry.get(EXAMPLE_TYPE).validate_webhook(published)
    assert raised.value.path == "payloadAsString"
    assert raised.value.keyword == "required"


# Documented fields


@pytest.mark.parametrize(("message_type", "field"), documented_required_fields())
def test_a_documented_field_that_is_missing_is_rejected_with_its_path_only_if_required(
    registry: Registry,
    message_type: str,
    field: str,
) -> None:
    required = PUBLISHED_TYPES[message_type]["documentedDetails"]["required"]
    payload = valid_payload(message_type)
    payload["details"].pop(field, None)
    if field not in required:
        registry.get(message_type).validate_payload(payload)
        return
    violation = rejection(registry, message_type, payload)
    assert violation.path == f"payload.details.{field}"
    assert violation.keyword == "required"
    assert violation.message_type == message_type


def test_the_contracts_require_exactly_the_documented_required_fields(registry: Registry) -> None:
    for name, event in PUBLISHED_TYPES.items():
        declared = registry.get(name).schema["$defs"]["details"].get("required", ["messageType"])
        documented = event.get("documentedDetails", {}).get("required", ["messageType"])
        assert sorted(declared) == sorted(documented), name


@pytest.mark.parametrize(("message_type", "field", "documented_type"), documented_fields())
def test_a_documented_field_with_a_wrong_value_is_rejected_with_its_path(
    registry: Registry,
    message_type: str,
    field: str,
    documented_type: str,
) -> None:
    for wrong in wrong_values(documented_type):
        payload = valid_payload(message_type)
        payload["details"][field] = wrong
        violation = rejection(registry, message_type, payload)
        assert violation.path == f"payload.details.{field}", wrong
        assert violation.pointer == f"/payload/details/{field}"


@pytest.mark.parametrize("field", ["accountReference", "amount", "totalFees", "totalAmount"])
def test_fields_of_the_documented_example_are_typed_but_not_required(
    registry: Registry, field: str
) -> None:
    payload = valid_payload(EXAMPLE_TYPE)
    del payload["details"][field]
    registry.get(EXAMPLE_TYPE).validate_payload(payload)
    payload["details"][field] = "1000" if field != "accountReference" else 1000
    assert rejection(registry, EXAMPLE_TYPE, payload).path == f"payload.details.{field}"


def test_money_must_be_whole_minor_units(registry: Registry) -> None:
    payload = valid_payload("event.claim.created.v1")
    payload["details"]["amount"] = 501.25
    assert rejection(registry, "event.claim.created.v1", payload).keyword == "type"
    payload["details"]["amount"] = -7
    registry.get("event.claim.created.v1").validate_payload(payload)


# Undocumented types and common identifiers


def test_undocumented_detail_fields_stay_open(registry: Registry) -> None:
    for contract in registry:
        payload = valid_payload(contract.message_type)
        payload["details"]["somethingUndocumented"] = {"nested": [1, 2.5, None, True, "x"]}
        payload["details"]["amountInCents"] = "not constrained either"
        contract.validate_payload(payload)


@pytest.mark.parametrize("identifier", COMMON_IDENTIFIERS)
def test_common_identifiers_are_strings_when_present_and_never_required_unless_documented(
    registry: Registry, identifier: str
) -> None:
    contract = registry.get(UNDOCUMENTED_TYPE)
    payload = valid_payload(UNDOCUMENTED_TYPE)
    contract.validate_payload(payload)
    payload["details"][identifier] = "REF-1"
    contract.validate_payload(payload)
    payload["details"][identifier] = 1
    assert rejection(registry, UNDOCUMENTED_TYPE, payload).path == f"payload.details.{identifier}"


def test_a_payload_of_another_type_is_rejected_at_its_message_type(registry: Registry) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    violation = rejection(registry, "event.note.deleted.v1", payload)
    assert violation.path == "payload.details.messageType"
    assert violation.keyword == "const"


# Envelope


@pytest.mark.parametrize("field", ["details", "messageId", "timestamp"])
def test_a_missing_envelope_field_is_rejected_with_its_path(registry: Registry, field: str) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    del payload[field]
    assert rejection(registry, UNDOCUMENTED_TYPE, payload).path == f"payload.{field}"


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("messageId", "", "payload.messageId"),
        ("messageId", 17, "payload.messageId"),
        ("timestamp", "2021-10-14T15:33:16Z", "payload.timestamp"),
        ("timestamp", "2021-10-14T15:33:16.848+00:00", "payload.timestamp"),
        ("timestamp", "2021-10-14 15:33:16.848Z", "payload.timestamp"),
        ("timestamp", "2021-13-14T15:33:16.848Z", "payload.timestamp"),
        ("timestamp", "2021-10-14T15:33:16.848Z\n", "payload.timestamp"),
        ("user", {"id": 7, "poolId": "p", "originator": "o"}, "payload.user.id"),
        ("user", {"id": "u", "poolId": "p", "originator": "o", "role": "x"}, "payload.user.role"),
        ("user", {"id": "u", "originator": "o"}, "payload.user.poolId"),
        ("user", "USER_ID", "payload.user"),
        ("tenant", "acme", "payload.tenant"),
    ],
)
def test_a_wrong_envelope_is_rejected_with_its_path(
    registry: Registry, field: str, value: object, path: str
) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    payload[field] = value
    assert rejection(registry, UNDOCUMENTED_TYPE, payload).path == path


@pytest.mark.parametrize(
    "user",
    [
        None,
        {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"},
        {"id": "USER_ID", "poolId": "POOL_ID", "originator": "free text, not an enumeration"},
        {"id": "", "poolId": "", "originator": ""},
    ],
)
def test_user_is_optional_and_names_all_three_fields_as_free_text(
    registry: Registry, user: dict[str, str] | None
) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    if user is not None:
        payload["user"] = user
    registry.get(UNDOCUMENTED_TYPE).validate_payload(payload)


@pytest.mark.parametrize("missing", ["id", "poolId", "originator"])
def test_a_user_without_one_of_its_three_fields_is_rejected_naming_it(
    registry: Registry, missing: str
) -> None:
    # The dispatcher never sends such a user: gRPC's EventUser always has all three, and
    # POST /v1/events refuses a user that leaves one out.
    payload = valid_payload(UNDOCUMENTED_TYPE)
    payload["user"] = {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"}
    del payload["user"][missing]
    violation = rejection(registry, UNDOCUMENTED_TYPE, payload)
    assert (violation.path, violation.message) == (f"payload.user.{missing}", "is required")


def test_an_empty_user_is_rejected(registry: Registry) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    payload["user"] = {}
    assert rejection(registry, UNDOCUMENTED_TYPE, payload).path.startswith("payload.user.")


@pytest.mark.parametrize("message_id", ["evt_01HF3Z", "42", "09FEEB6F-350A-430A-A040-CD1C558CBC91"])
def test_a_message_id_that_is_not_a_uuid_is_accepted(registry: Registry, message_id: str) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    payload["messageId"] = message_id
    registry.get(UNDOCUMENTED_TYPE).validate_payload(payload)


# Paths, parts, dispatch


def test_the_same_field_has_the_same_path_whichever_part_is_validated(registry: Registry) -> None:
    contract = registry.get("event.claim.created.v1")
    payload = valid_payload("event.claim.created.v1")
    payload["details"]["currency"] = "euro"
    body = {"payload": payload, "signature": "c2ln", "payloadAsString": "{}"}
    paths = set()
    for part, value in (
        (Part.DETAILS, payload["details"]),
        (Part.PAYLOAD, payload),
        (Part.WEBHOOK, body),
    ):
        with pytest.raises(ContractViolation) as raised:
            contract.validate(value, part=part)
        paths.add(raised.value.path)
    assert paths == {"payload.details.currency"}


def test_violations_lists_every_failing_field_once(registry: Registry) -> None:
    payload = valid_payload("event.claim.created.v1")
    del payload["details"]["claimRef"], payload["messageId"]
    payload["details"]["amount"] = "100"
    payload["timestamp"] = "yesterday"
    found = registry.get("event.claim.created.v1").violations(payload)
    assert sorted(violation.path for violation in found) == [
        "payload.details.amount",
        "payload.details.claimRef",
        "payload.messageId",
        "payload.timestamp",
    ]
    assert (
        registry.get("event.claim.created.v1").violations(valid_payload("event.claim.created.v1"))
        == []
    )


def test_the_registry_validates_a_payload_against_the_contract_of_its_own_type(
    registry: Registry,
) -> None:
    payload = valid_payload("event.claim.created.v1")
    assert registry.validate_payload(payload).message_type == "event.claim.created.v1"
    del payload["details"]["dueDate"]
    with pytest.raises(ContractViolation, match=r"payload\.details\.dueDate"):
        registry.validate_payload(payload)


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"messageId": "m", "timestamp": "2021-10-14T15:33:16.848Z"}, "payload.details"),
        (
            {"details": [], "messageId": "m", "timestamp": "2021-10-14T15:33:16.848Z"},
            "payload.details",
        ),
        (
            {"details": {}, "messageId": "m", "timestamp": "2021-10-14T15:33:16.848Z"},
            "payload.details.messageType",
        ),
        (
            {
                "details": {"messageType": 3},
                "messageId": "m",
                "timestamp": "2021-10-14T15:33:16.848Z",
            },
            "payload.details.messageType",
        ),
        ("not an object", "payload"),
    ],
)
def test_a_payload_without_a_usable_message_type_is_rejected_by_the_envelope(
    registry: Registry, payload: object, path: str
) -> None:
    with pytest.raises(ContractViolation) as raised:
        registry.validate_payload(payload)
    assert raised.value.path == path


def test_a_payload_of_an_unknown_type_is_refused_as_unknown(registry: Registry) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    payload["details"]["messageType"] = "event.note.created.v2"
    with pytest.raises(UnknownMessageType) as raised:
        registry.validate_payload(payload)
    assert raised.value.message_type == "event.note.created.v2"
    assert isinstance(raised.value, LookupError)


def test_a_pointer_relative_to_the_payload_suits_an_api_whose_body_is_the_payload(
    registry: Registry,
) -> None:
    payload = valid_payload("event.claim.created.v1")
    payload["details"]["amount"] = "1"
    violation = rejection(registry, "event.claim.created.v1", payload)
    assert violation.pointer_from(Part.PAYLOAD.location) == "/details/amount"
