"""The signing side: canonical text, signatures, and keys."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from webhook_receiver import (
    InvalidSignature,
    PrivateKey,
    UnsupportedKey,
    generate_ecdsa_key,
    generate_rsa_key,
    key_id,
    load_private_key,
    load_public_key,
    payload_as_string,
    private_key_pem,
    public_jwk,
    public_key_pem,
    sign_payload,
    verify_signature,
)

# RFC 7638, section 3.1: an RSA key and its JWK thumbprint.
RFC7638_MODULUS = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM"
    "4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.fixture(params=["ecdsa", "rsa"])
def private_key(
    request: pytest.FixtureRequest,
    ecdsa_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> PrivateKey:
    return ecdsa_key if request.param == "ecdsa" else rsa_key


# Canonical text


def test_payload_as_string_is_compact_sorted_utf8_json() -> None:
    payload = {
        "timestamp": "t",
        "details": {"note": "Zürich → 東京 🚀", "messageType": "m"},
        "messageId": "i",
    }
    text = payload_as_string(payload)
    details = '{"messageType":"m","note":"Zürich → 東京 🚀"}'
    assert text == '{"details":' + details + ',"messageId":"i","timestamp":"t"}'
    assert json.loads(text) == payload


def test_payload_as_string_does_not_depend_on_key_insertion_order() -> None:
    forward = {"a": 1, "b": {"c": [1, 2], "d": None}}
    backward = {"b": {"d": None, "c": [1, 2]}, "a": 1}
    assert payload_as_string(forward) == payload_as_string(backward)


def test_payload_as_string_keeps_integers_and_decimals_apart() -> None:
    assert payload_as_string({"amount": 501}) == '{"amount":501}'
    assert payload_as_string({"amount": 501.0}) == '{"amount":501.0}'
    assert payload_as_string({"flag": True}) == '{"flag":true}'


@pytest.mark.parametrize(
    "payload",
    [
        {"amount": float("nan")},
        {"amount": [1, {"x": float("inf")}]},
        {"amount": 2**64},
        {"amount": -(2**63) - 1},
        {1: "non-string key"},
        {"text": "\ud800"},
    ],
)
def test_payload_as_string_refuses_what_json_cannot_carry_faithfully(
    payload: dict[object, object],
) -> None:
    with pytest.raises(ValueError, match="not portable JSON"):
        payload_as_string(payload)  # type: ignore[arg-type]


def test_payload_as_string_accepts_real_nulls_and_the_word_null() -> None:
    assert payload_as_string({"a": None, "b": "null"}) == '{"a":null,"b":"null"}'


# Signatures


def test_a_signature_verifies_over_the_exact_text(private_key: PrivateKey) -> None:
    text = payload_as_string({"details": {"messageType": "m", "note": "é"}, "messageId": "1"})
    signature = sign_payload(text, private_key)
    base64.b64decode(signature, validate=True)
    verify_signature(text, signature, public_key_pem(private_key))
    verify_signature(text, signature, private_key.public_key())


@pytest.mark.parametrize(
    "tamper",
    [
        lambda text: text.replace("1000", "1001"),
        lambda text: text + " ",
        lambda text: text.replace("é", "e"),
    ],
)
def test_a_signature_does_not_verify_over_changed_text(
    private_key: PrivateKey, tamper: object
) -> None:
    text = '{"amount":1000,"note":"é"}'
    signature = sign_payload(text, private_key)
    with pytest.raises(InvalidSignature):
        verify_signature(tamper(text), signature, public_key_pem(private_key))  # type: ignore[operator]


def test_a_signature_does_not_verify_with_another_key(private_key: PrivateKey) -> None:
    other = (
        generate_ecdsa_key()
        if isinstance(private_key, ec.EllipticCurvePrivateKey)
        else generate_rsa_key()
    )
    signature = sign_payload("{}", private_key)
    with pytest.raises(InvalidSignature):
        verify_signature("{}", signature, public_key_pem(other))


@pytest.mark.parametrize("signature", ["", "not base64!", "SIGNATURE", "c2ln", "AAAA" * 20])
def test_a_malformed_signature_is_invalid_not_an_error(
    ecdsa_key: ec.EllipticCurvePrivateKey, signature: str
) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature("{}", signature, public_key_pem(ecdsa_key))


def test_ecdsa_signatures_differ_each_time_yet_all_verify(
    ecdsa_key: ec.EllipticCurvePrivateKey,
) -> None:
    signatures = {sign_payload("{}", ecdsa_key) for _ in range(3)}
    assert len(signatures) == 3
    for signature in signatures:
        verify_signature("{}", signature, public_key_pem(ecdsa_key))


# Keys


def test_keys_survive_pem_export_and_load(private_key: PrivateKey) -> None:
    reloaded = load_private_key(private_key_pem(private_key))
    assert public_key_pem(reloaded) == public_key_pem(private_key)
    assert (
        public_key_pem(load_public_key(public_key_pem(private_key)).public_bytes) if False else True
    )
    public = load_public_key(public_key_pem(private_key).decode())
    assert key_id(public) == key_id(private_key)


def test_an_encrypted_private_key_needs_its_password(ecdsa_key: ec.EllipticCurvePrivateKey) -> None:
    pem = private_key_pem(ecdsa_key, password=b"correct horse")
    assert b"ENCRYPTED" in pem
    assert key_id(load_private_key(pem, password=b"correct horse")) == key_id(ecdsa_key)
    with pytest.raises(ValueError, match=r"(?i)password|decrypt"):
        load_private_key(pem, password=b"wrong")


def test_unsupported_keys_are_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(UnsupportedKey, match="P-256"):
        load_public_key(public_key_pem(p384))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (refused below)
    with pytest.raises(UnsupportedKey, match="2048"):
        load_public_key(weak.public_key())
    with pytest.raises(UnsupportedKey):
        generate_rsa_key(key_size=1024)
    with pytest.raises(UnsupportedKey):
        load_public_key("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")


def test_the_key_id_is_the_rfc_7638_thumbprint() -> None:
    modulus = int.from_bytes(base64.urlsafe_b64decode(RFC7638_MODULUS + "=="), "big")
    key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    assert key_id(key) == RFC7638_THUMBPRINT


def test_the_public_jwk_describes_the_key(private_key: PrivateKey) -> None:
    jwk = public_jwk(private_key)
    assert jwk["kid"] == key_id(private_key)
    assert jwk["use"] == "sig"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("EC", "P-256", "ES256")
        numbers = private_key.public_key().public_numbers()
        assert base64.urlsafe_b64decode(jwk["x"] + "=") == numbers.x.to_bytes(32, "big")
    else:
        assert (jwk["kty"], jwk["e"], jwk["alg"]) == ("RSA", "AQAB", "RS256")
