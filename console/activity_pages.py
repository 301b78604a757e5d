"""Activity: the dispatcher's last minute, second by second, refreshed in place.

GET /activity draws the whole page with the chart; GET /activity/chart draws the chart
alone, which `static/activity.js` fetches every 2 seconds to swap in. Without script the
page is the same chart, with a link to draw it again. A token of every tenant may narrow
it to one tenant with `?tenant=`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from console.access import calls, require
from console.activity_chart import chart, oldest_due_text
from console.rendering import render
from service_common.auth import Scope
from webhooks.v1 import dispatcher_service_pb2 as pb

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/activity")
async def activity_page(request: web.Request) -> web.StreamResponse:
    context = await _activity(request)
    return await render(request, "activity.html", context)


@routes.get("/activity/chart")
async def activity_fragment(request: web.Request) -> web.StreamResponse:
    """The chart alone (no layout, and the page's one-time notices left for the page)."""
    context = await _activity(request)
    return aiohttp_jinja2.render_template("activity_chart.html", request, context)


async def _activity(request: web.Request) -> dict[str, Any]:
    """The chart's context, from one GetDeliveryActivity call."""
    found = require(request, Scope.DELIVERIES_READ)
    tenant = request.query.get("tenant", "").strip() if found.all_tenants else ""
    c = calls(request)
    answer = await c(c.dispatcher.GetDeliveryActivity, pb.GetDeliveryActivityRequest(tenant=tenant))
    return {
        "tenant": tenant,
        "chart": chart(answer.seconds),
        "oldest_due": oldest_due_text(_oldest_due(answer), datetime.now(UTC)),
        "queue_depth": answer.queue_depth,
        "query": urlencode({"tenant": tenant}) if tenant else "",
    }


def _oldest_due(answer: pb.GetDeliveryActivityResponse) -> datetime | None:
    if not answer.HasField("oldest_due_time"):
        return None
    return answer.oldest_due_time.ToDatetime(tzinfo=UTC)
