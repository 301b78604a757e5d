"""Property tests: values generated from the contracts (hypothesis-jsonschema) are accepted,
survive signing and verification unchanged, and both validators always agree."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contracts.contract_samples import DOCUMENTED_VALID_DETAILS, EXAMPLE_TYPE
from webhook_contracts import ContractViolation, Part, Registry, load_registry
from webhook_contracts.explain import Explainer
from webhook_contracts.testing import payloads
from webhook_receiver import (
    build_webhook,
    payload_as_string,
    public_key_pem,
    same_json,
    verify_webhook,
)

ALL_TYPES = sorted(load_registry().message_types)
DOCUMENTED_TYPES = sorted([*DOCUMENTED_VALID_DETAILS, EXAMPLE_TYPE])
BOUNDED = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


def any_type_payloads() -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(ALL_TYPES).flatmap(lambda name: st.tuples(st.just(name), payloads(name)))


def documented_type_payloads() -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(DOCUMENTED_TYPES).flatmap(
        lambda name: st.tuples(st.just(name), payloads(name))
    )


@pytest.fixture(scope="module")
def explainer(registry: Registry) -> Explainer:
    return Explainer(registry.documents.by_id())


@BOUNDED
@given(generated=any_type_payloads())
def test_generated_payloads_of_every_type_validate_and_round_trip_through_a_signed_body(
    registry: Registry, ecdsa_key: ec.EllipticCurvePrivateKey, generated: tuple[str, Any]
) -> None:
    message_type, payload = generated
    contract = registry.get(message_type)
    contract.validate_payload(payload)
    assert same_json(json.loads(payload_as_string(payload)), payload)
    body = build_webhook(payload, ecdsa_key)
    contract.validate_webhook(body)
    webhook = verify_webhook(
        json.dumps(body).encode(), public_key_pem(ecdsa_key), registry=registry
    )
    assert webhook.contract_checked
    assert webhook.message_type == message_type
    assert same_json(webhook.payload, payload)


@BOUNDED
@given(generated=documented_type_payloads())
def test_generated_payloads_of_documented_types_are_accepted_by_both_validators(
    registry: Registry, explainer: Explainer, generated: tuple[str, Any]
) -> None:
    message_type, payload = generated
    assert registry.get(message_type).is_valid(payload)
    assert explainer.validator(Part.PAYLOAD.schema_uri(message_type)).is_valid(payload)


@BOUNDED
@given(generated=documented_type_payloads(), data=st.data())
def test_both_validators_agree_on_any_value_in_any_field_and_name_it(
    registry: Registry, explainer: Explainer, generated: tuple[str, Any], data: st.DataObject
) -> None:
    message_type, payload = generated
    contract = registry.get(message_type)
    fields = sorted(payload["details"])
    in_details = data.draw(st.booleans())
    container = payload["details"] if in_details else payload
    field = data.draw(st.sampled_from(fields if in_details else ["messageId", "timestamp", "user"]))
    container[field] = data.draw(json_values)
    reference = explainer.validator(Part.PAYLOAD.schema_uri(message_type)).is_valid(payload)
    assert contract.is_valid(payload) == reference
    if not reference:
        with pytest.raises(ContractViolation) as raised:
            contract.validate_payload(payload)
        prefix = f"payload.details.{field}" if in_details else f"payload.{field}"
        assert raised.value.path.startswith(prefix)
