"""Subscriptions: list with filters and pages, create, edit, enable or disable, delete.

Edits and toggles are conditional on the etag the page was drawn from: a change made
meanwhile (FAILED_PRECONDITION) redraws the form with the current values and says so,
rather than overwriting it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import grpc
from aiohttp import web

from console.access import calls, require
from console.call_errors import field_errors
from console.form_fields import field_text
from console.rendering import flash, render
from console.subscription_forms import (
    ALGORITHMS,
    SubscriptionForm,
    create_request,
    form_of,
    list_request,
    posted,
    toggle_request,
    update_request,
)
from service_common.auth import Scope
from webhooks.v1 import subscription_service_pb2 as pb

__all__ = ["routes"]

routes = web.RouteTableDef()
PAGE_SIZE = 25
CONFLICT = "This subscription changed since the form was opened: someone else saved it."
_CONFLICT_ON_EDIT = (
    f"{CONFLICT} Nothing was saved. Its current values are shown below the form; "
    "saving again replaces them with what the form holds."
)


@routes.get("/subscriptions")
async def subscription_list(request: web.Request) -> web.StreamResponse:
    all_tenants = require(request, Scope.SUBSCRIPTIONS_READ).all_tenants
    filters, listing = list_request(request.query, all_tenants=all_tenants, page_size=PAGE_SIZE)
    c = calls(request)
    found = await c(c.subscriptions.ListSubscriptions, listing)
    context: dict[str, Any] = {
        "subscriptions": found.subscriptions,
        "filters": filters,
        "next_page": found.next_page_token,
        "later_page": bool(listing.page_token),
    }
    return await render(request, "subscriptions.html", context)


@routes.get("/subscriptions/new")
async def subscription_new(request: web.Request) -> web.StreamResponse:
    require(request, Scope.SUBSCRIPTIONS_WRITE)
    return await _form_page(request, SubscriptionForm(), errors={})


@routes.post("/subscriptions")
async def subscription_create(request: web.Request) -> web.StreamResponse:
    require(request, Scope.SUBSCRIPTIONS_WRITE)
    form = posted(await request.post())
    c = calls(request)
    try:
        created = await c(c.subscriptions.CreateSubscription, create_request(form))
    except grpc.aio.AioRpcError as error:
        return await _refused(request, error, form)
    await flash(request, "Subscription created.")
    raise web.HTTPSeeOther(f"/subscriptions/{created.subscription.id}")


@routes.get("/subscriptions/{id}")
async def subscription_detail(request: web.Request) -> web.StreamResponse:
    require(request, Scope.SUBSCRIPTIONS_READ)
    subscription = await _get(request)
    return await render(request, "subscription.html", {"subscription": subscription})


@routes.get("/subscriptions/{id}/edit")
async def subscription_edit(request: web.Request) -> web.StreamResponse:
    require(request, Scope.SUBSCRIPTIONS_WRITE)
    subscription = await _get(request)
    return await _form_page(request, form_of(subscription), errors={}, editing=subscription)


@routes.post("/subscriptions/{id}/edit")
async def subscription_save(request: web.Request) -> web.StreamResponse:
    require(request, Scope.SUBSCRIPTIONS_WRITE)
    form = posted(await request.post())
    c = calls(request)
    try:
        await c(c.subscriptions.UpdateSubscription, update_request(request.match_info["id"], form))
    except grpc.aio.AioRpcError as error:
        if _is_conflict(error):
            current = await _get(request)
            retry = replace(form, etag=current.etag)
            errors = {"": _CONFLICT_ON_EDIT}
            return await _form_page(request, retry, errors, editing=current, status=409)
        return await _refused(request, error, form, editing=True)
    await flash(request, "Subscription saved.")
    raise web.HTTPSeeOther(f"/subscriptions/{request.match_info['id']}")


@routes.post("/subscriptions/{id}/disable")
async def subscription_disable(request: web.Request) -> web.StreamResponse:
    return await _toggle(request, enabled=False)


@routes.post("/subscriptions/{id}/enable")
async def subscription_enable(request: web.Request) -> web.StreamResponse:
    return await _toggle(request, enabled=True)


@routes.get("/subscriptions/{id}/delete")
async def subscription_delete_confirm(request: web.Request) -> web.StreamResponse:
    require(request, Scope.SUBSCRIPTIONS_WRITE)
    subscription = await _get(request)
    return await render(request, "subscription_delete.html", {"subscription": subscription})


@routes.post("/subscriptions/{id}/delete")
async def subscription_delete(request: web.Request) -> web.StreamResponse:
    require(request, Scope.SUBSCRIPTIONS_WRITE)
    etag = field_text(await request.post(), "etag")
    c = calls(request)
    deleting = pb.DeleteSubscriptionRequest(id=request.match_info["id"], etag=etag)
    try:
        await c(c.subscriptions.DeleteSubscription, deleting)
    except grpc.aio.AioRpcError as error:
        if not _is_conflict(error):
            raise
        await flash(request, f"{CONFLICT} Nothing was deleted.", kind="error")
        raise web.HTTPSeeOther(f"/subscriptions/{request.match_info['id']}") from None
    await flash(request, "Subscription deleted.")
    raise web.HTTPSeeOther("/subscriptions")


async def _toggle(request: web.Request, *, enabled: bool) -> web.StreamResponse:
    require(request, Scope.SUBSCRIPTIONS_WRITE)
    fields = await request.post()
    subscription_id = request.match_info["id"]
    toggling = toggle_request(
        subscription_id,
        enabled=enabled,
        reason=field_text(fields, "reason"),
        etag=field_text(fields, "etag"),
    )
    c = calls(request)
    try:
        await c(c.subscriptions.UpdateSubscription, toggling)
    except grpc.aio.AioRpcError as error:
        if not (_is_conflict(error) or error.code() == grpc.StatusCode.INVALID_ARGUMENT):
            raise
        text = CONFLICT if _is_conflict(error) else error.details()
        await flash(request, f"{text} Nothing was changed.", kind="error")
    else:
        await flash(request, "Subscription enabled." if enabled else "Subscription disabled.")
    raise web.HTTPSeeOther(f"/subscriptions/{subscription_id}")


async def _get(request: web.Request) -> pb.Subscription:
    c = calls(request)
    found = await c(
        c.subscriptions.GetSubscription, pb.GetSubscriptionRequest(id=request.match_info["id"])
    )
    return found.subscription


def _is_conflict(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _refused(
    request: web.Request,
    error: grpc.aio.AioRpcError,
    form: SubscriptionForm,
    *,
    editing: bool = False,
) -> web.StreamResponse:
    """The form again, as typed, with what the service said about each field (and, when
    `editing`, the subscription as it is now); any other failure is the failure page's."""
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        raise error
    current = await _get(request) if editing else None
    return await _form_page(request, form, field_errors(error), editing=current, status=400)


async def _form_page(
    request: web.Request,
    form: SubscriptionForm,
    errors: dict[str, str],
    *,
    editing: pb.Subscription | None = None,
    status: int = 200,
) -> web.Response:
    context: dict[str, Any] = {
        "form": form,
        "errors": errors,
        "editing": editing,
        "algorithms": ALGORITHMS,
    }
    return await render(request, "subscription_form.html", context, status=status)
