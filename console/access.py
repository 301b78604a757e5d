"""Who the page is for, and what they may do: every page but sign-in needs an operator.

`access_middleware` sends a visitor without a session to the sign-in form; a page then
takes the operator with `operator(request)`, the stubs carrying their token with
`calls(request)`, and refuses what the token's scopes do not allow with `require`.
The services check every call again: hiding a control is for the operator's sake, not
the platform's.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from console.services import Calls, Services
from console.session import Operator, signed_in
from service_common.auth import Scope

__all__ = ["SERVICES", "access_middleware", "calls", "operator", "require"]

SERVICES = web.AppKey("services", Services)
_OPERATOR = web.RequestKey("operator", Operator)
_PUBLIC = ("/sign-in", "/static/", "/healthz")


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(_PUBLIC):
        return await handler(request)
    found = await signed_in(request)
    if found is None:
        raise web.HTTPSeeOther("/sign-in")
    request[_OPERATOR] = found
    return await handler(request)


def operator(request: web.Request) -> Operator:
    return request[_OPERATOR]


def calls(request: web.Request) -> Calls:
    return request.app[SERVICES].calls(operator(request).token)


def require(request: web.Request, scope: Scope) -> Operator:
    """The operator, when the token has `scope`; 403 otherwise."""
    found = operator(request)
    if not found.may(scope):
        raise web.HTTPForbidden(reason=f"The token lacks the '{scope}' scope")
    return found
