"""Signing in with a bearer token, and out.

The token is checked by asking each service what it allows (`CallerService.GetCaller`),
and kept only in the encrypted session cookie. A token neither service knows is refused
on the form itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
from aiohttp import web

from console.access import SERVICES
from console.form_fields import field_text
from console.rendering import flash, render
from console.services import Calls
from console.session import Operator, sign_in, sign_out, signed_in
from webhooks.v1 import caller_service_pb2 as caller_pb

if TYPE_CHECKING:
    from webhooks.v1.caller_service_pb2_grpc import CallerServiceAsyncStub

__all__ = ["operator_of", "routes"]

routes = web.RouteTableDef()


@routes.get("/sign-in")
async def sign_in_form(request: web.Request) -> web.StreamResponse:
    if await signed_in(request) is not None:
        raise web.HTTPSeeOther("/")
    return await render(request, "sign_in.html", {"error": ""})


@routes.post("/sign-in")
async def sign_in_submit(request: web.Request) -> web.StreamResponse:
    token = field_text(await request.post(), "token")
    if not token:
        return await _refused(request, "Enter a token.")
    operator = await operator_of(request.app[SERVICES].calls(token), token)
    if operator is None:
        return await _refused(request, "Neither service accepts that token.")
    await sign_in(request, operator)
    raise web.HTTPSeeOther("/")


@routes.post("/sign-out")
async def sign_out_submit(request: web.Request) -> web.StreamResponse:
    await sign_out(request)
    await flash(request, "Signed out.")
    raise web.HTTPSeeOther("/sign-in")


async def operator_of(calls: Calls, token: str) -> Operator | None:
    """What each service lets `token` do; None when neither knows it."""
    answers = await asyncio.gather(
        _caller(calls, calls.subscriptions_caller), _caller(calls, calls.dispatcher_caller)
    )
    known = [answer for answer in answers if answer is not None]
    if not known:
        return None
    subscriptions, deliveries = answers
    return Operator(
        token=token,
        tenant=known[0].tenant,
        subscription_scopes=frozenset(subscriptions.scopes if subscriptions else ()),
        delivery_scopes=frozenset(deliveries.scopes if deliveries else ()),
    )


async def _caller(calls: Calls, stub: CallerServiceAsyncStub) -> caller_pb.GetCallerResponse | None:
    try:
        return await calls(stub.GetCaller, caller_pb.GetCallerRequest())
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return None
        raise


async def _refused(request: web.Request, error: str) -> web.Response:
    return await render(request, "sign_in.html", {"error": error}, status=401)
