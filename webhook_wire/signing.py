"""Signatures over ``payloadAsString``, as the platform makes them.

The signature is over the UTF-8 bytes of ``payloadAsString`` with SHA-256: ECDSA P-256
(DER-encoded, as OpenSSL, Node and Java produce and expect) or RSA PKCS#1 v1.5. It travels
base64-encoded (standard alphabet, padded).

WebCrypto (``crypto.subtle``), JOSE libraries and Go's ``ecdsa.Verify`` take an ECDSA
signature as the fixed-size ``r||s`` of IEEE P1363 (RFC 7518 section 3.4) instead of DER;
``ieee_p1363_signature`` re-encodes one for them. An RSA PKCS#1 v1.5 signature has one
encoding only, the same for every library.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .keys import PrivateKey, PublicKey

__all__ = ["ieee_p1363_signature", "sign_payload"]

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


_ECDSA_KEYS = (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)


def ieee_p1363_signature(signature_b64: str, key: PrivateKey | PublicKey) -> str:
    """The base64 signature ``signature_b64`` (as ``sign_payload`` makes it) in the encoding
    WebCrypto and JOSE verify: ``r||s`` for an ECDSA key, the same bytes for an RSA key."""
    if not isinstance(key, _ECDSA_KEYS):
        return signature_b64
    r, s = decode_dss_signature(base64.b64decode(signature_b64, validate=True))
    size = (key.curve.key_size + 7) // 8
    return base64.b64encode(r.to_bytes(size, "big") + s.to_bytes(size, "big")).decode("ascii")
