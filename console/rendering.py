"""Pages: a template rendered with the operator, the CSRF token and the flashed notices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import get_session

from console.session import csrf_token, signed_in

__all__ = ["flash", "render"]


async def render(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    session = await get_session(request)
    notices = session.pop("notices", [])
    full = {
        "operator": await signed_in(request),
        "csrf_token": await csrf_token(request),
        "notices": notices,
        "path": request.path,
        **context,
    }
    return aiohttp_jinja2.render_template(template, request, full, status=status)


async def flash(request: web.Request, text: str, *, kind: str = "success") -> None:
    """A notice shown once, on the next page rendered (after a redirect)."""
    session = await get_session(request)
    session["notices"] = [*session.get("notices", []), {"kind": kind, "text": text}]
