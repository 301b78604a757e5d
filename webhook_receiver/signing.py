"""Checking the signature over ``payloadAsString`` that the platform made.

``webhook_wire.signing`` makes it: SHA-256 over the UTF-8 bytes of ``payloadAsString``,
ECDSA P-256 (DER-encoded) or RSA PKCS#1 v1.5, travelling as padded standard base64.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from webhook_wire.keys import PublicKey, load_public_key

from .errors import InvalidSignature

__all__ = ["verify_signature"]

_ECDSA = ec.ECDSA(hashes.SHA256())


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
