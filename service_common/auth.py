"""Bearer-token authentication: tokens, tenants and scopes.

Tokens are never stored: the tokens file holds the SHA-256 of each, and a presented
token is hashed and compared against every entry in constant time, so neither the
file nor the timing of a refusal reveals a token.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service_common.errors import InvalidArgument, PermissionDenied, Unauthenticated

__all__ = [
    "ALL_TENANTS",
    "Caller",
    "Scope",
    "TokenStore",
    "TokensFileError",
    "hash_token",
    "validate_tenant",
]

ALL_TENANTS = "*"
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# RFC 6750 tokens are visible ASCII; anything else (a byte that is no UTF-8, which aiohttp
# hands on as a surrogate) is refused here rather than failing when the token is hashed.
_BEARER_RE = re.compile(r"^[ \t]*bearer[ \t]+([\x21-\x7e]+)[ \t]*$", re.IGNORECASE)
_MAX_TOKEN_LENGTH = 4096


class Scope(enum.StrEnum):
    PUBLISH = "publish"
    SUBSCRIPTIONS_READ = "subscriptions:read"
    SUBSCRIPTIONS_WRITE = "subscriptions:write"
    DELIVERIES_READ = "deliveries:read"
    DELIVERIES_WRITE = "deliveries:write"
    # Grants every other scope, within the token's tenant.
    ADMIN = "admin"


class TokensFileError(Exception):
    """The tokens file is missing or malformed; raised at start-up."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_tenant(tenant: str, *, field: str) -> str:
    if not _TENANT_RE.fullmatch(tenant):
        raise InvalidArgument.of(
            field,
            "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return tenant


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant of the token (or `*` for every tenant) and its scopes."""

    tenant: str
    scopes: frozenset[Scope]

    @property
    def all_tenants(self) -> bool:
        return self.tenant == ALL_TENANTS

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def require(self, scope: Scope) -> None:
        if not self.has(scope):
            raise PermissionDenied(f"the token lacks the '{scope}' scope")

    def tenant_to_write(self, requested: str, *, field: str) -> str:
        """The tenant a new resource belongs to: the token's, or the named one for `*` tokens."""
        if self.all_tenants:
            if not requested:
                raise InvalidArgument.of(field, "required for a token of every tenant")
            return validate_tenant(requested, field=field)
        if requested and requested != self.tenant:
            raise PermissionDenied("the token does not belong to that tenant")
        return self.tenant

    def tenant_to_read(self, requested: str) -> str | None:
        """The tenant a read is limited to; None means every tenant (only for `*` tokens)."""
        if self.all_tenants:
            return requested or None
        if requested and requested != self.tenant:
            raise PermissionDenied("the token does not belong to that tenant")
        return self.tenant

    def may_see(self, tenant: str) -> bool:
        return self.all_tenants or tenant == self.tenant


class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str
    scopes: frozenset[Scope] = Field(min_length=1)

    @field_validator("tenant")
    @classmethod
    def _tenant_shape(cls, value: str) -> str:
        if value != ALL_TENANTS and not _TENANT_RE.fullmatch(value):
            raise ValueError("must be '*' or a tenant id of letters, digits, '.', '_', '-'")
        return value


class _TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[_TokenEntry]

    @field_validator("tokens")
    @classmethod
    def _distinct(cls, tokens: list[_TokenEntry]) -> list[_TokenEntry]:
        hashes = [entry.sha256 for entry in tokens]
        if len(set(hashes)) != len(hashes):
            raise ValueError("the same token (sha256) is listed more than once")
        return tokens


class TokenStore:
    """The tokens a service accepts, as loaded from the tokens file."""

    def __init__(self, entries: Iterable[_TokenEntry] = ()) -> None:
        self._entries = tuple(entries)

    @classmethod
    def from_file(cls, path: Path) -> TokenStore:
        try:
            raw = json.loads(path.read_text())
            parsed = _TokensFile.model_validate(raw)
        except OSError as exc:
            raise TokensFileError(f"cannot read tokens file {path}: {exc.strerror}") from exc
        except (ValueError, ValidationError) as exc:
            raise TokensFileError(f"tokens file {path} is malformed: {exc}") from exc
        return cls(parsed.tokens)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        token = _bearer_token(metadata or ())
        digest = hash_token(token).encode()
        found: _TokenEntry | None = None
        # No early exit: every entry is compared so the time taken does not say which matched.
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.sha256.encode()):
                found = entry
        if found is None:
            raise Unauthenticated("the bearer token is not valid")
        return Caller(tenant=found.tenant, scopes=found.scopes)


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if not values:
        raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
    if len(values) > 1:
        raise Unauthenticated("more than one 'authorization' metadata entry")
    value = values[0]
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    match = _BEARER_RE.fullmatch(text)
    if match is None:
        raise Unauthenticated(
            "the 'authorization' metadata must be 'Bearer <token>', the token in visible ASCII"
        )
    if len(match.group(1)) > _MAX_TOKEN_LENGTH:
        raise Unauthenticated(f"the bearer token is longer than {_MAX_TOKEN_LENGTH} characters")
    return match.group(1)
