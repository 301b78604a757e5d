"""Signatures over ``payloadAsString``: made by the platform, checked by receivers.

The signature is over the UTF-8 bytes of ``payloadAsString`` with SHA-256: ECDSA P-256
(DER-encoded, as OpenSSL, Node and Java produce and expect) or RSA PKCS#1 v1.5. It travels
base64-encoded (standard alphabet, padded).
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .errors import InvalidSignature
from .keys import PrivateKey, PublicKey, load_public_key

__all__ = ["sign_payload", "verify_signature"]

_ECDSA = ec.ECDSA(hashes.SHA256())


def sign_payload(payload_as_string: str, private_key: PrivateKey) -> str:
    """Base64 signature of the UTF-8 bytes of ``payload_as_string``."""
    data = payload_as_string.encode("utf-8")
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        signature = private_key.sign(data, _ECDSA)
    elif isinstance(private_key, rsa.RSAPrivateKey):
        signature = private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise TypeError(f"cannot sign with {type(private_key).__name__}")
    return base64.b64encode(signature).decode("ascii")


def verify_signature(
    payload_as_string: str, signature: str, public_key: PublicKey | bytes | str
) -> None:
    """Raise ``InvalidSignature`` unless ``signature`` signs ``payload_as_string``."""
    key = load_public_key(public_key)
    try:
        data = payload_as_string.encode("utf-8")
        raw = base64.b64decode(signature, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as error:
        raise InvalidSignature(f"signature cannot verify: {error}") from error
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(raw, data, _ECDSA)
        else:
            key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
    except _CryptographyInvalidSignature:
        raise InvalidSignature("signature does not match payloadAsString") from None
