"""Verifying a received webhook: signature, payload, contract, in that order."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import webhook_contracts
from tests.contracts.contract_samples import UNDOCUMENTED_TYPE, valid_payload
from webhook_receiver import (
    ContractViolation,
    InvalidSignature,
    MalformedWebhook,
    PayloadMismatch,
    PrivateKey,
    UnknownMessageType,
    WebhookRejected,
    build_webhook,
    generate_ecdsa_key,
    public_key_pem,
    sign_payload,
    verify_webhook,
)

CLAIM = "event.claim.created.v1"


@pytest.fixture(params=["ecdsa", "rsa"])
def private_key(
    request: pytest.FixtureRequest,
    ecdsa_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> PrivateKey:
    return ecdsa_key if request.param == "ecdsa" else rsa_key


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def signed_body(payload_text: str, payload: dict[str, Any], key: PrivateKey) -> dict[str, Any]:
    """A body whose payloadAsString is ``payload_text`` exactly, correctly signed."""
    return {
        "payload": payload,
        "signature": sign_payload(payload_text, key),
        "payloadAsString": payload_text,
    }


@pytest.mark.parametrize("form", ["bytes", "str", "dict"])
def test_a_genuine_webhook_verifies_and_yields_its_signed_payload(
    private_key: PrivateKey, form: str
) -> None:
    payload = valid_payload(CLAIM)
    body = build_webhook(payload, private_key)
    forms: dict[str, bytes | str | dict[str, Any]] = {
        "bytes": raw(body),
        "str": raw(body).decode(),
        "dict": body,
    }
    received = forms[form]
    webhook = verify_webhook(received, public_key_pem(private_key))
    assert webhook.payload == payload
    assert webhook.payload_as_string == body["payloadAsString"]
    assert (webhook.message_type, webhook.message_id, webhook.timestamp) == (
        CLAIM,
        payload["messageId"],
        payload["timestamp"],
    )
    assert webhook.details["amount"] == 50100
    assert webhook.user is None
    assert webhook.contract_checked


def test_key_order_and_whitespace_of_the_signed_text_do_not_matter(
    ecdsa_key: ec.EllipticCurvePrivateKey,
) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    text = json.dumps(dict(reversed(list(payload.items()))), indent=2)
    webhook = verify_webhook(signed_body(text, payload, ecdsa_key), public_key_pem(ecdsa_key))
    assert webhook.payload == payload


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda payload: payload["details"].update(amount=50100.0), "payload.details.amount"),
        (lambda payload: payload["details"].update(amount=50101), "payload.details.amount"),
        (lambda payload: payload["details"].update(flag=True), "payload.details.flag"),
        (lambda payload: payload.update(messageId="another"), "payload.messageId"),
        (lambda payload: payload.pop("timestamp"), "payload.timestamp"),
        (lambda payload: payload["details"].update(items=[1, 2]), "payload.details.items[1]"),
    ],
)
def test_a_payload_that_is_not_the_signed_text_is_refused_naming_the_field(
    ecdsa_key: ec.EllipticCurvePrivateKey, change: Any, path: str
) -> None:
    signed = valid_payload(CLAIM)
    if path.endswith("flag"):
        signed["details"]["flag"] = 1
    if path.endswith("[1]"):
        signed["details"]["items"] = [1, 2.0]
    body = build_webhook(signed, ecdsa_key)
    sent = json.loads(body["payloadAsString"])
    change(sent)
    with pytest.raises(PayloadMismatch) as raised:
        verify_webhook({**body, "payload": sent}, public_key_pem(ecdsa_key))
    assert str(raised.value) == f"payload differs from payloadAsString at {path}"


def test_a_signature_by_another_key_is_refused(ecdsa_key: ec.EllipticCurvePrivateKey) -> None:
    body = build_webhook(valid_payload(CLAIM), generate_ecdsa_key())
    with pytest.raises(InvalidSignature):
        verify_webhook(raw(body), public_key_pem(ecdsa_key))


def test_the_signature_is_checked_before_anything_else(
    ecdsa_key: ec.EllipticCurvePrivateKey,
) -> None:
    body = build_webhook({"details": {"messageType": "nonsense"}}, ecdsa_key)
    forged = {**body, "payloadAsString": body["payloadAsString"].replace("nonsense", "other")}
    with pytest.raises(InvalidSignature):
        verify_webhook(forged, public_key_pem(ecdsa_key))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"payload": {}, "signature": "c2ln"}',
        b'{"payload": "text", "signature": "c2ln", "payloadAsString": "{}"}',
        b'{"payload": {}, "signature": 1, "payloadAsString": "{}"}',
        b'{"payload": {}, "payload": {}, "signature": "c2ln", "payloadAsString": "{}"}',
        b'{"payload": {"n": NaN}, "signature": "c2ln", "payloadAsString": "{}"}',
        b"\xff\xfe",
    ],
)
def test_a_body_that_is_not_a_webhook_is_malformed(
    ecdsa_key: ec.EllipticCurvePrivateKey, body: bytes
) -> None:
    with pytest.raises(MalformedWebhook):
        verify_webhook(body, public_key_pem(ecdsa_key))


def test_signed_text_with_duplicate_keys_is_malformed(
    ecdsa_key: ec.EllipticCurvePrivateKey,
) -> None:
    text = '{"messageId": "a", "messageId": "b"}'
    with pytest.raises(MalformedWebhook, match="the key 'messageId' more than once"):
        verify_webhook(signed_body(text, {"messageId": "b"}, ecdsa_key), public_key_pem(ecdsa_key))


def test_a_signed_payload_that_breaks_its_contract_is_refused_naming_the_field(
    ecdsa_key: ec.EllipticCurvePrivateKey,
) -> None:
    payload = valid_payload(CLAIM)
    payload["details"]["currency"] = "euro"
    with pytest.raises(ContractViolation) as raised:
        verify_webhook(build_webhook(payload, ecdsa_key), public_key_pem(ecdsa_key))
    assert raised.value.path == "payload.details.currency"
    assert isinstance(raised.value, webhook_contracts.ContractViolation)
    assert isinstance(raised.value, WebhookRejected)
    webhook = verify_webhook(
        build_webhook(payload, ecdsa_key), public_key_pem(ecdsa_key), validate=False
    )
    assert not webhook.contract_checked


def test_an_unknown_message_type_is_refused_unless_accepted(
    ecdsa_key: ec.EllipticCurvePrivateKey,
) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    payload["details"]["messageType"] = "event.note.pinned.v1"
    body = build_webhook(payload, ecdsa_key)
    with pytest.raises(UnknownMessageType) as raised:
        verify_webhook(body, public_key_pem(ecdsa_key))
    assert isinstance(raised.value, webhook_contracts.UnknownMessageType)
    webhook = verify_webhook(body, public_key_pem(ecdsa_key), accept_unknown_types=True)
    assert webhook.message_type == "event.note.pinned.v1"
    assert not webhook.contract_checked
