"""The `webhook-signature-p1363` header: the delivery's signature as WebCrypto and JOSE take
it (raw r||s for ES256, the PKCS#1 v1.5 bytes for RS256), made once per signature."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dispatcher_service.keyring import KeyRing
from dispatcher_service.signing import P1363_SIGNATURE_HEADER, SignatureAlgorithm, delivery_headers
from webhook_receiver import ieee_p1363_signature, load_public_key

PAYLOAD = '{"details":{"messageType":"event.note.created.v1"},"messageId":"m-1"}'


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    directory: Path = tmp_path_factory.mktemp("keys")
    return KeyRing.open(directory)


def test_an_es256_delivery_carries_a_raw_r_s_signature_that_verifies(ring: KeyRing) -> None:
    signature = ring.sign(PAYLOAD, SignatureAlgorithm.ECDSA_P256_SHA256)
    headers = delivery_headers(
        message_id="m-1", timestamp=1, body=b"{}", signature=signature, secret=None, user_agent="t"
    )

    raw = base64.b64decode(headers[P1363_SIGNATURE_HEADER], validate=True)
    assert len(raw) == 64
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    key = ring.public_key(signature.key_id)
    assert key is not None
    public = load_public_key(key.public_key_pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(encode_dss_signature(r, s), PAYLOAD.encode(), ec.ECDSA(hashes.SHA256()))
    # The body's signature stays DER, what createVerify and OpenSSL take.
    assert base64.b64decode(signature.value_b64)[0] == 0x30


def test_an_rs256_delivery_carries_the_same_bytes_in_the_header(ring: KeyRing) -> None:
    signature = ring.sign(PAYLOAD, SignatureAlgorithm.RSA_PKCS1_SHA256)
    headers = delivery_headers(
        message_id="m-1", timestamp=1, body=b"{}", signature=signature, secret=None, user_agent="t"
    )

    assert headers[P1363_SIGNATURE_HEADER] == signature.value_b64


def test_short_r_and_s_are_padded_to_the_curve_size() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = base64.b64encode(encode_dss_signature(1, 2)).decode()

    raw = base64.b64decode(ieee_p1363_signature(der, key))

    assert raw == (1).to_bytes(32, "big") + (2).to_bytes(32, "big")
