"""The console's web application: its middlewares, templates and pages."""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session import session_middleware

from console import (
    activity_pages,
    contract_pages,
    delivery_pages,
    key_pages,
    signin_pages,
    subscription_pages,
)
from console.access import SERVICES, access_middleware, operator
from console.csrf import PUBLIC_ORIGIN, csrf_middleware
from console.failures import failure_middleware
from console.formatting import FILTERS
from console.services import Services
from console.session import session_storage
from service_common.auth import Scope

__all__ = ["create_app"]

_HERE = Path(__file__).parent
_SECURITY_HEADERS = {
    # No script, style or image from anywhere but the console itself; no framing.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_app(
    services: Services,
    *,
    session_key: bytes,
    secure: bool,
    max_age: int,
    public_origin: str | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[
            session_middleware(session_storage(session_key, secure=secure, max_age=max_age)),
            failure_middleware,
            access_middleware,
            csrf_middleware,
        ]
    )
    app[SERVICES] = services
    if public_origin is not None:
        app[PUBLIC_ORIGIN] = public_origin
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(FILTERS)
    app.router.add_static("/static/", _HERE / "static")
    app.router.add_get("/", _home)
    app.router.add_get("/healthz", _healthz)
    for pages in (
        signin_pages,
        subscription_pages,
        delivery_pages,
        key_pages,
        contract_pages,
        activity_pages,
    ):
        app.router.add_routes(pages.routes)
    app.on_response_prepare.append(_security_headers)
    return app


async def _home(request: web.Request) -> web.StreamResponse:
    """The first page the operator may read: subscriptions, else deliveries, else contracts."""
    found = operator(request)
    for scope, page in (
        (Scope.SUBSCRIPTIONS_READ, "/subscriptions"),
        (Scope.DELIVERIES_READ, "/deliveries"),
    ):
        if found.may(scope):
            raise web.HTTPSeeOther(page)
    raise web.HTTPSeeOther("/contracts")


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
