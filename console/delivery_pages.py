"""Deliveries: list with filters and pages, one delivery with its attempts, redelivery.

Redelivering one delivery replays its event to its subscription; the replay form schedules
again every failed or dead delivery of a subscription created since a time. A replay the
dispatcher refuses (an expunged payload: FAILED_PRECONDITION; a bad field:
INVALID_ARGUMENT) is said on the page it was asked from rather than as an error page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from aiohttp import web

from console.access import calls, require
from console.call_errors import field_errors
from console.form_fields import field_text
from console.rendering import flash, render
from service_common.auth import Scope
from service_common.conversions import timestamp_of
from webhooks.v1 import dispatcher_service_pb2 as pb

__all__ = [
    "PAGE_SIZE",
    "STATES",
    "ReplayForm",
    "list_request",
    "on_form",
    "parse_since",
    "redeliver_request",
    "replay_errors",
    "replay_form",
    "replay_request",
    "routes",
    "scheduled_text",
]

routes = web.RouteTableDef()
PAGE_SIZE = 50
# The state filter's options: value posted, label shown, and the enum it stands for.
STATES: tuple[tuple[str, str, pb.DeliveryState.ValueType], ...] = (
    ("", "Any", pb.DELIVERY_STATE_UNSPECIFIED),
    ("pending", "Pending", pb.DELIVERY_STATE_PENDING),
    ("retrying", "Retrying", pb.DELIVERY_STATE_RETRYING),
    ("succeeded", "Succeeded", pb.DELIVERY_STATE_SUCCEEDED),
    ("dead", "Dead", pb.DELIVERY_STATE_DEAD),
)
_FILTERS = ("message_id", "subscription_id", "state", "tenant")
_FORM_FIELDS = ("subscription_id", "since", "tenant")
# What the dispatcher may refuse a replay for, said on the form rather than as an error page.
_SHOWN_ON_FORM = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


@dataclass(frozen=True)
class ReplayForm:
    """The replay form as shown or posted; `since` is the datetime-local text, UTC."""

    subscription_id: str = ""
    since: str = ""
    tenant: str = ""


def list_request(
    query: Mapping[str, str], *, all_tenants: bool
) -> tuple[dict[str, str], pb.ListDeliveriesRequest]:
    """The filters as typed (for the form and the pager) and the ListDeliveries request.

    An unknown state means any; `tenant` is only sent for a token of every tenant.
    """
    filters = {name: query.get(name, "").strip() for name in _FILTERS}
    if not all_tenants:
        filters["tenant"] = ""
    listing = pb.ListDeliveriesRequest(
        page_size=PAGE_SIZE,
        page_token=query.get("page", ""),
        message_id=filters["message_id"],
        subscription_id=filters["subscription_id"],
        state=_state(filters["state"]),
        tenant=filters["tenant"],
    )
    return filters, listing


def parse_since(text: str) -> datetime:
    """A `datetime-local` value (`2026-03-01T14:30`, seconds optional) as a UTC time.

    The field carries no zone: the console reads it as UTC, and says so next to it. An
    explicit offset, should one be sent, is honoured. Raises ValueError for anything else.
    """
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def replay_form(fields: Mapping[str, object]) -> ReplayForm:
    """The replay form as posted (non-text fields ignored)."""
    return ReplayForm(
        subscription_id=field_text(fields, "subscription_id"),
        since=field_text(fields, "since"),
        tenant=field_text(fields, "tenant"),
    )


def replay_errors(form: ReplayForm, *, all_tenants: bool) -> dict[str, str]:
    """What the console can tell before asking: missing fields, an unreadable time."""
    errors: dict[str, str] = {}
    if not form.subscription_id:
        errors["subscription_id"] = "Give the subscription whose failures to replay."
    if all_tenants and not form.tenant:
        errors["tenant"] = "Give the subscription's tenant."
    try:
        parse_since(form.since)
    except ValueError:
        errors["since"] = "Give a date and time, e.g. 2026-03-01 14:30 (UTC)."
    return errors


def redeliver_request(delivery: pb.Delivery, *, all_tenants: bool) -> pb.RedeliverEventRequest:
    """RedeliverEvent for one delivery: its event, to its subscription only."""
    return pb.RedeliverEventRequest(
        message_id=delivery.message_id,
        subscription_id=delivery.subscription_id,
        tenant=delivery.tenant if all_tenants else "",
    )


def replay_request(form: ReplayForm, *, all_tenants: bool) -> pb.RedeliverEventRequest:
    """RedeliverEvent for the failed and dead deliveries of a subscription since a time."""
    return pb.RedeliverEventRequest(
        subscription_id=form.subscription_id,
        since=timestamp_of(parse_since(form.since)),
        tenant=form.tenant if all_tenants else "",
    )


def on_form(errors: Mapping[str, str]) -> dict[str, str]:
    """The service's field violations by the replay form's fields; a violation of a field
    the form lacks (`message_id`) is said about the whole form (key ``)."""
    shown = {name: text for name, text in errors.items() if name in _FORM_FIELDS}
    others = [text for name, text in errors.items() if name not in _FORM_FIELDS]
    if others:
        shown[""] = " ".join(others)
    return shown


def scheduled_text(delivery_ids: list[str]) -> str:
    """The notice after a redelivery: how many, and which."""
    if not delivery_ids:
        return "Nothing was scheduled again: no delivery of this event matched."
    noun = "delivery" if len(delivery_ids) == 1 else "deliveries"
    return f"Scheduled again: {len(delivery_ids)} {noun} ({', '.join(delivery_ids)})."


def _state(value: str) -> pb.DeliveryState.ValueType:
    for posted, _, state in STATES:
        if posted == value:
            return state
    return pb.DELIVERY_STATE_UNSPECIFIED


@routes.get("/deliveries")
async def delivery_list(request: web.Request) -> web.StreamResponse:
    found = require(request, Scope.DELIVERIES_READ)
    filters, listing = list_request(request.query, all_tenants=found.all_tenants)
    c = calls(request)
    page = await c(c.dispatcher.ListDeliveries, listing)
    context: dict[str, Any] = {
        "deliveries": page.deliveries,
        "filters": filters,
        "filtered": any(filters.values()),
        "states": STATES,
        "may_replay": found.may(Scope.DELIVERIES_WRITE),
        "next_page": page.next_page_token,
        "later_page": bool(listing.page_token),
    }
    return await render(request, "deliveries.html", context)


@routes.get("/deliveries/{id}")
async def delivery_detail(request: web.Request) -> web.StreamResponse:
    found = require(request, Scope.DELIVERIES_READ)
    delivery = await _get(request)
    context = {"delivery": delivery, "may_redeliver": found.may(Scope.DELIVERIES_WRITE)}
    return await render(request, "delivery.html", context)


@routes.post("/deliveries/{id}/redeliver")
async def delivery_redeliver(request: web.Request) -> web.StreamResponse:
    found = require(request, Scope.DELIVERIES_WRITE)
    delivery = await _get(request)
    c = calls(request)
    try:
        done = await c(
            c.dispatcher.RedeliverEvent, redeliver_request(delivery, all_tenants=found.all_tenants)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        await flash(request, error.details() or "It cannot be delivered again.", kind="error")
    else:
        await flash(request, scheduled_text(list(done.delivery_ids)))
    raise web.HTTPSeeOther(f"/deliveries/{delivery.id}")


@routes.get("/redeliver")
async def replay_page(request: web.Request) -> web.StreamResponse:
    require(request, Scope.DELIVERIES_WRITE)
    query = request.query
    form = ReplayForm(
        subscription_id=field_text(query, "subscription_id"), tenant=field_text(query, "tenant")
    )
    return await _replay_page(request, form, errors={})


@routes.post("/redeliver")
async def replay(request: web.Request) -> web.StreamResponse:
    all_tenants = require(request, Scope.DELIVERIES_WRITE).all_tenants
    form = replay_form(await request.post())
    errors = replay_errors(form, all_tenants=all_tenants)
    if errors:
        return await _replay_page(request, form, errors=errors, status=400)
    c = calls(request)
    try:
        done = await c(c.dispatcher.RedeliverEvent, replay_request(form, all_tenants=all_tenants))
    except grpc.aio.AioRpcError as error:
        if error.code() not in _SHOWN_ON_FORM:
            raise
        refused = on_form(field_errors(error, prefix=""))
        return await _replay_page(request, form, errors=refused, status=_status_of(error))
    return await _replay_page(request, form, errors={}, scheduled=list(done.delivery_ids))


async def _replay_page(
    request: web.Request,
    form: ReplayForm,
    *,
    errors: dict[str, str],
    scheduled: list[str] | None = None,
    status: int = 200,
) -> web.Response:
    context = {"form": form, "errors": errors, "scheduled": scheduled}
    return await render(request, "redeliver.html", context, status=status)


def _status_of(error: grpc.aio.AioRpcError) -> int:
    return 409 if error.code() == grpc.StatusCode.FAILED_PRECONDITION else 400


async def _get(request: web.Request) -> pb.Delivery:
    c = calls(request)
    found = await c(c.dispatcher.GetDelivery, pb.GetDeliveryRequest(id=request.match_info["id"]))
    return found.delivery
