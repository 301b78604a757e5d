"""Signing keys: the public keys that verify delivery signatures, current and retired.

Receivers pick the key by the `webhook-key-id` header of a delivery; the page shows each
key's PEM so an operator can hand it over, and which key signs new deliveries now.
"""

from __future__ import annotations

from aiohttp import web

from console.access import calls, require
from console.rendering import render
from service_common.auth import Scope
from webhooks.v1 import dispatcher_service_pb2 as pb

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/signing-keys")
async def signing_keys(request: web.Request) -> web.StreamResponse:
    require(request, Scope.DELIVERIES_READ)
    c = calls(request)
    found = await c(c.dispatcher.ListSigningKeys, pb.ListSigningKeysRequest())
    return await render(request, "signing_keys.html", {"keys": found.keys})
