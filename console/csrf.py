"""CSRF protection: every form posts back its session's token, from this console's origin.

Two checks, either of which refuses a forged post with 403: the `csrf_token` field must
equal the session's (a page of another site cannot read it), and an `Origin` header, when
the browser sends one, must be this console's: `CONSOLE_PUBLIC_URL`'s origin when set (a
proxy in front), else the scheme and host the request came in on. The SameSite=Strict
cookie is a third line: a cross-site post arrives without the session at all.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_session import get_session

__all__ = ["FIELD", "PUBLIC_ORIGIN", "csrf_middleware", "origin_matches"]

FIELD = "csrf_token"
# The origin operators open the console at, when it is not the one requests arrive on.
PUBLIC_ORIGIN = web.AppKey("public_origin", str)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def origin_matches(origin: str | None, expected: str) -> bool:
    """Whether an `Origin` header (None: not sent) names this console's `expected` origin."""
    return origin is None or origin == expected


def _origin(request: web.Request) -> str:
    if PUBLIC_ORIGIN in request.app:
        return request.app[PUBLIC_ORIGIN]
    return f"{request.scheme}://{request.host}"


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in _SAFE_METHODS:
        return await handler(request)
    if not origin_matches(request.headers.get("Origin"), _origin(request)):
        raise web.HTTPForbidden(reason="Cross-origin post refused")
    session = await get_session(request)
    expected = session.get("csrf")
    sent = (await request.post()).get(FIELD)
    if not isinstance(expected, str) or not isinstance(sent, str):
        raise web.HTTPForbidden(reason="Form refused: missing CSRF token")
    if not hmac.compare_digest(expected.encode(), sent.encode()):
        raise web.HTTPForbidden(reason="Form refused: wrong CSRF token")
    return await handler(request)
