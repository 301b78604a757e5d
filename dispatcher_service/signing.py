"""The signatures and headers of a delivery.

Every delivery carries the asymmetric signature of its `payloadAsString`, made with a key of
the key ring (`dispatcher_service.keyring`) and encoded as `webhook_wire.signing` does for
both ends; and, when its subscription has a secret, the Standard Webhooks HMAC of its body,
so receivers can also check it with an off-the-shelf Standard Webhooks library.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from dataclasses import dataclass

from webhook_wire.keys import PrivateKey
from webhook_wire.signing import ieee_p1363_signature, sign_payload

__all__ = [
    "DEFAULT_ALGORITHM",
    "P1363_SIGNATURE_HEADER",
    "STANDARD_WEBHOOKS_SECRET_PREFIX",
    "Signature",
    "SignatureAlgorithm",
    "delivery_headers",
    "signature_of",
    "standard_webhooks_signature",
]


class SignatureAlgorithm(enum.StrEnum):
    """How a delivery is signed; the values are those the subscription service stores."""

    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"
    RSA_PKCS1_SHA256 = "rsa-pkcs1-sha256"

    @property
    def jws_name(self) -> str:
        """The JOSE name (RFC 7518): the JWKS `alg` and the `webhook-signature-algorithm`."""
        return _JWS_NAMES[self]


_JWS_NAMES = {
    SignatureAlgorithm.ECDSA_P256_SHA256: "ES256",
    SignatureAlgorithm.RSA_PKCS1_SHA256: "RS256",
}
DEFAULT_ALGORITHM = SignatureAlgorithm.ECDSA_P256_SHA256
STANDARD_WEBHOOKS_SECRET_PREFIX = "whsec_"  # noqa: S105  # a prefix, not a secret
P1363_SIGNATURE_HEADER = "webhook-signature-p1363"


@dataclass(frozen=True, kw_only=True)
class Signature:
    """The asymmetric signature of one `payloadAsString`, and the key that made it.

    `value_b64` is the body's `signature` (DER for ECDSA, what `createVerify` and OpenSSL
    take); `p1363_b64` the same signature as WebCrypto and JOSE take it (`r||s` for ECDSA,
    the same bytes for RSA), made once with the signature so every delivery reusing it
    sends it as is. None only for a signature made by other means: its header is left out.
    """

    key_id: str
    algorithm: SignatureAlgorithm
    value_b64: str
    p1363_b64: str | None = None


def signature_of(
    payload_as_string: str,
    *,
    algorithm: SignatureAlgorithm,
    key_id: str,
    private_key: PrivateKey,
) -> Signature:
    """The signature of the UTF-8 bytes of `payload_as_string`, in both of its encodings."""
    value = sign_payload(payload_as_string, private_key)
    return Signature(
        key_id=key_id,
        algorithm=algorithm,
        value_b64=value,
        p1363_b64=ieee_p1363_signature(value, private_key),
    )


def standard_webhooks_signature(
    *, secret: str, message_id: str, timestamp: int, body: bytes
) -> str:
    """The Standard Webhooks `v1,` signature: base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.

    `body` is the exact HTTP body sent; `secret` is `whsec_` + base64 of the key.
    """
    signed = b".".join((message_id.encode(), str(timestamp).encode(), body))
    digest = hmac.digest(_secret_key(secret), signed, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode("ascii")


def delivery_headers(
    *,
    message_id: str,
    timestamp: int,
    body: bytes,
    signature: Signature,
    secret: str | None,
    user_agent: str,
) -> dict[str, str]:
    """The headers of one delivery attempt.

    `timestamp` is the attempt's time in unix seconds, not the event's: Standard Webhooks
    receivers refuse timestamps more than a few minutes away from their clock.

    `webhook-signature-p1363` carries the body's signature in the encoding that goes with
    the JWKS `alg` (RFC 7518: `r||s` for ES256), so `crypto.subtle.verify` and JOSE libraries
    check it with the published JWK, while the body keeps the DER that `createVerify` and
    OpenSSL expect. It is sent for RS256 too (the same bytes as the body's), so a WebCrypto
    receiver reads one header whatever the algorithm.
    """
    _check_header_value(message_id, name="webhook-id")
    headers = {
        "content-type": "application/json",
        "user-agent": user_agent,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-key-id": signature.key_id,
        "webhook-signature-algorithm": signature.algorithm.jws_name,
    }
    if signature.p1363_b64:
        headers[P1363_SIGNATURE_HEADER] = signature.p1363_b64
    if secret:
        headers["webhook-signature"] = standard_webhooks_signature(
            secret=secret, message_id=message_id, timestamp=timestamp, body=body
        )
    return headers


def _secret_key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix(STANDARD_WEBHOOKS_SECRET_PREFIX), validate=True)
    except binascii.Error as error:
        raise ValueError("a Standard Webhooks secret is 'whsec_' + base64") from error
    if not key:
        raise ValueError("a Standard Webhooks secret must not be empty")
    return key


def _check_header_value(value: str, *, name: str) -> None:
    # A line break would let the value start a header of its own.
    if not value or not value.isprintable():
        raise ValueError(f"{name} must be non-empty printable text")
