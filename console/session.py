"""Who is signed in: the operator's token, kept in an encrypted session cookie.

The cookie is HttpOnly, SameSite=Strict and Secure when the console serves HTTPS, and is
encrypted and authenticated (Fernet) with a key only the console holds, so the token is
neither readable by the page's scripts nor by anyone who copies the cookie's text out of
a log. The token never appears in a URL. Each session also holds the CSRF token that
every form must send back (see `csrf.py`).
"""

from __future__ import annotations

import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp_session import Session, get_session, new_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from service_common.auth import Scope

__all__ = [
    "COOKIE_NAME",
    "Operator",
    "csrf_token",
    "session_key",
    "session_storage",
    "sign_in",
    "sign_out",
    "signed_in",
]

COOKIE_NAME = "webhooks_console"

# aiohttp-session keeps the session under a plain string key, which aiohttp 3.14 warns about.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")


@dataclass(frozen=True)
class Operator:
    """The signed-in token's tenant (`*`: every tenant) and what each service allows it."""

    token: str
    tenant: str
    subscription_scopes: frozenset[str]
    delivery_scopes: frozenset[str]

    @property
    def all_tenants(self) -> bool:
        return self.tenant == "*"

    def may(self, scope: Scope | str) -> bool:
        """Whether the service that checks `scope` grants it (or `admin`) to the token."""
        scope = Scope(scope)
        granted = (
            self.subscription_scopes
            if scope in (Scope.SUBSCRIPTIONS_READ, Scope.SUBSCRIPTIONS_WRITE)
            else self.delivery_scopes
        )
        return scope.value in granted or Scope.ADMIN.value in granted


def session_key(path: Path | None) -> bytes:
    """The cookie key in `path` (created, owner-only, when missing), or a new one."""
    if path is None:
        return Fernet.generate_key()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(Fernet.generate_key() + b"\n")
    return path.read_bytes().strip()


def session_storage(key: bytes, *, secure: bool, max_age: int) -> EncryptedCookieStorage:
    return EncryptedCookieStorage(
        Fernet(key),
        cookie_name=COOKIE_NAME,
        max_age=max_age,
        secure=secure,
        httponly=True,
        samesite="Strict",
    )


async def signed_in(request: web.Request) -> Operator | None:
    session = await get_session(request)
    if "token" not in session:
        return None
    return Operator(
        token=session["token"],
        tenant=session["tenant"],
        subscription_scopes=frozenset(session["subscription_scopes"]),
        delivery_scopes=frozenset(session["delivery_scopes"]),
    )


async def sign_in(request: web.Request, operator: Operator) -> None:
    """Starts a new session (a new CSRF token too) for `operator`."""
    session = await new_session(request)
    session["token"] = operator.token
    session["tenant"] = operator.tenant
    session["subscription_scopes"] = sorted(operator.subscription_scopes)
    session["delivery_scopes"] = sorted(operator.delivery_scopes)
    _new_csrf(session)


async def sign_out(request: web.Request) -> None:
    session = await get_session(request)
    session.invalidate()


async def csrf_token(request: web.Request) -> str:
    """The session's CSRF token, made on first use (the sign-in form needs one too)."""
    session = await get_session(request)
    if "csrf" not in session:
        _new_csrf(session)
    token: str = session["csrf"]
    return token


def _new_csrf(session: Session) -> None:
    session["csrf"] = secrets.token_urlsafe(32)
