"""Contracts: every message type's JSON Schema, as a table of fields with an example.

The contracts are published documents shipped with the `webhook_contracts` package, the
same ones the dispatcher serves at `/v1/contracts/{messageType}`: the console reads them
from the package rather than through a service. The raw schema is the self-contained
(bundled) form, so what an operator downloads here is what receivers download there.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aiohttp import web

from console.contract_view import FieldRow, field_rows
from console.rendering import render
from webhook_contracts import Contract, Registry, UnknownMessageType, load_registry

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/contracts")
async def contract_list(request: web.Request) -> web.StreamResponse:
    return await render(request, "contracts.html", {"contracts": list(_registry())})


# Registered before the page: `{message_type}` alone would also match a name ending `.json`.
@routes.get("/contracts/{message_type}.json")
async def contract_schema(request: web.Request) -> web.StreamResponse:
    text = _schema_text(_contract(request).message_type)
    return web.Response(text=text, content_type="application/json")


@routes.get("/contracts/{message_type}")
async def contract_detail(request: web.Request) -> web.StreamResponse:
    contract = _contract(request)
    context: dict[str, Any] = {
        "contract": contract,
        "rows": _rows(contract.message_type),
        "examples": [json.dumps(example, indent=2) for example in contract.examples],
        "schema_id": _bundle(contract.message_type).get("$id", ""),
    }
    return await render(request, "contract.html", context)


def _contract(request: web.Request) -> Contract:
    """The contract the path names; 404 for a type without one."""
    message_type = request.match_info["message_type"]
    try:
        return _registry().get(message_type)
    except UnknownMessageType:
        raise web.HTTPNotFound(
            reason=f"No contract has the message type {message_type[:200]!r}."
        ) from None


def _registry() -> Registry:
    return load_registry()


@cache
def _bundle(message_type: str) -> dict[str, Any]:
    """The self-contained contract (the contracts do not change while the console runs)."""
    return _registry().bundle(message_type)


@cache
def _rows(message_type: str) -> tuple[FieldRow, ...]:
    return tuple(field_rows(_bundle(message_type)))


@cache
def _schema_text(message_type: str) -> str:
    return json.dumps(_bundle(message_type), indent=2, ensure_ascii=False) + "\n"
