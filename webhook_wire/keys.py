"""Signing keys: generate, export, load, and name them.

ECDSA P-256 is the default (fast to sign); RSA-2048 is the alternative. Public keys travel
as PEM (SubjectPublicKeyInfo), which every platform's verify call takes, and as JWK in the
key set; a key's id is its RFC 7638 thumbprint, so it is derived, never assigned.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "MIN_RSA_KEY_SIZE",
    "PrivateKey",
    "PublicKey",
    "UnsupportedKey",
    "generate_ecdsa_key",
    "generate_rsa_key",
    "key_id",
    "load_jwk",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_jwk",
    "public_key_pem",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
MIN_RSA_KEY_SIZE = 2048


class UnsupportedKey(ValueError):
    """A key that is neither ECDSA P-256 nor RSA of at least 2048 bits."""


def generate_ecdsa_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def generate_rsa_key(*, key_size: int = 2048) -> rsa.RSAPrivateKey:
    if key_size < MIN_RSA_KEY_SIZE:
        raise UnsupportedKey(f"RSA keys have at least {MIN_RSA_KEY_SIZE} bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def private_key_pem(key: PrivateKey, *, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when a password is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``) of a key or its private half."""
    public = _public(key)
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(pem: bytes | str, *, password: bytes | None = None) -> PrivateKey:
    key = serialization.load_pem_private_key(_bytes(pem), password=password)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise UnsupportedKey(f"unsupported private key type {type(key).__name__}")
    _check_supported(key.public_key())
    return key


def load_public_key(pem: bytes | str | PublicKey) -> PublicKey:
    """A public key from PEM (or the key itself), refusing what the kit does not support."""
    if isinstance(pem, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        key: object = pem
    else:
        try:
            key = serialization.load_pem_public_key(_bytes(pem))
        except ValueError as error:
            raise UnsupportedKey(f"not a PEM public key: {error}") from error
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise UnsupportedKey(f"unsupported public key type {type(key).__name__}")
    _check_supported(key)
    return key


def load_jwk(jwk: Mapping[str, object]) -> PublicKey:
    """The public key of a JWK (``kty`` EC on P-256, or RSA), as ``public_jwk`` writes it."""
    try:
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            x, y = _jwk_int(jwk, "x"), _jwk_int(jwk, "y")
            key: PublicKey = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        elif jwk.get("kty") == "RSA":
            key = rsa.RSAPublicNumbers(_jwk_int(jwk, "e"), _jwk_int(jwk, "n")).public_key()
        else:
            raise UnsupportedKey(f"unsupported JWK: kty {jwk.get('kty')!r}, crv {jwk.get('crv')!r}")
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        if isinstance(error, UnsupportedKey):
            raise
        raise UnsupportedKey(f"not a valid public JWK: {error}") from error
    _check_supported(key)
    return key


def public_jwk(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 7517), with its ``kid``, ``alg`` and ``use``."""
    members = _thumbprint_members(_public(key))
    algorithm = "ES256" if members["kty"] == "EC" else "RS256"
    return {**members, "kid": key_id(key), "alg": algorithm, "use": "sig"}


def key_id(key: PrivateKey | PublicKey) -> str:
    """The key's RFC 7638 JWK thumbprint (SHA-256, base64url): stable and collision-free."""
    members = _thumbprint_members(_public(key))
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return _base64url(hashlib.sha256(canonical).digest())


def _thumbprint_members(key: PublicKey) -> dict[str, str]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": _base64url(numbers.x.to_bytes(32, "big")),
            "y": _base64url(numbers.y.to_bytes(32, "big")),
        }
    rsa_numbers = key.public_numbers()
    return {
        "e": _base64url(_unsigned_bytes(rsa_numbers.e)),
        "kty": "RSA",
        "n": _base64url(_unsigned_bytes(rsa_numbers.n)),
    }


def _check_supported(key: PublicKey) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise UnsupportedKey(f"ECDSA keys are P-256, not {key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_KEY_SIZE:
        raise UnsupportedKey(f"RSA keys have at least {MIN_RSA_KEY_SIZE} bits")


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key.public_key()
    return key


def _bytes(pem: bytes | str) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else pem


def _unsigned_bytes(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")


def _jwk_int(jwk: Mapping[str, object], name: str) -> int:
    text = jwk[name]
    if not isinstance(text, str):
        raise TypeError(f"JWK member {name} is not a string")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return int.from_bytes(data, "big")


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
