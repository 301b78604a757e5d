"""`webhooks deliveries list|show` and `webhooks redeliver`: the dispatcher's delivery log."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import dispatcher_service_pb2_grpc as pb_grpc
from webhooks_cli.connection import Client, Settings, collect_pages, settings_of
from webhooks_cli.output import (
    Output,
    enum_text,
    fields_table,
    message_json,
    print_json,
    print_table,
    time_text,
)

__all__ = ["app", "parse_since", "redeliver"]

app = typer.Typer(help="Follow deliveries and their attempts.", no_args_is_help=True)

_STATE_PREFIX = "DELIVERY_STATE_"
_RELATIVE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class State(enum.StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


def _client(ctx: typer.Context) -> tuple[Settings, Client]:
    settings = settings_of(ctx)
    return settings, Client(settings, settings.dispatcher_addr)


def _stub(client: Client) -> pb_grpc.DispatcherServiceStub:
    return pb_grpc.DispatcherServiceStub(client.channel)


@app.command("list")
def list_(
    ctx: typer.Context,
    message_id: Annotated[str, typer.Option(help="Only the deliveries of this event.")] = "",
    subscription: Annotated[str, typer.Option(help="Only those to this subscription.")] = "",
    state: Annotated[State | None, typer.Option(help="Only those in this state.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many (0: all).")] = 50,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Asked per call.")] = 100,
) -> None:
    """List deliveries, newest first."""
    settings, client = _client(ctx)
    wanted = (
        pb.DeliveryState.Value(_STATE_PREFIX + state.name)
        if state
        else pb.DELIVERY_STATE_UNSPECIFIED
    )

    def fetch(token: str, size: int) -> tuple[Sequence[pb.Delivery], str]:
        request = pb.ListDeliveriesRequest(
            page_size=size,
            page_token=token,
            subscription_id=subscription,
            message_id=message_id,
            state=wanted,
            tenant=settings.tenant,
        )
        page = client.call(_stub(client).ListDeliveries, request)
        return page.deliveries, page.next_page_token

    with client:
        found = collect_pages(fetch, limit=limit, page_size=page_size)
    if settings.output is Output.JSON:
        print_json([_json(d) for d in found])
        return
    print_table(
        ["ID", "MESSAGE ID", "TYPE", "SUBSCRIPTION", "STATE", "ATTEMPTS", "CREATED"],
        [
            [
                d.id,
                d.message_id,
                d.message_type,
                d.subscription_id,
                _state(d),
                str(d.attempt_count),
                time_text(d.create_time),
            ]
            for d in found
        ],
    )


@app.command()
def show(
    ctx: typer.Context,
    delivery_id: Annotated[str, typer.Argument(metavar="ID", help="The delivery's id.")],
) -> None:
    """Show one delivery with its attempts: time, status, latency, error."""
    settings, client = _client(ctx)
    with client:
        found = client.call(_stub(client).GetDelivery, pb.GetDeliveryRequest(id=delivery_id))
    delivery = found.delivery
    if settings.output is Output.JSON:
        print_json(_json(delivery))
        return
    fields_table(
        [
            ("id", delivery.id),
            ("tenant", delivery.tenant),
            ("message id", delivery.message_id),
            ("message type", delivery.message_type),
            ("subscription", delivery.subscription_id),
            ("url", delivery.url),
            ("state", _state(delivery)),
            ("attempts", str(delivery.attempt_count)),
            ("next attempt", time_text(delivery.next_attempt_time)),
            ("created", time_text(delivery.create_time)),
            ("updated", time_text(delivery.update_time)),
        ]
    )
    if delivery.attempts:
        print_table(
            ["#", "TIME", "STATUS", "LATENCY", "ERROR", "RESPONSE"],
            [
                [
                    str(a.number),
                    time_text(a.start_time),
                    str(a.status_code) if a.status_code else "-",
                    f"{a.latency_ms} ms",
                    a.error,
                    a.response_snippet,
                ]
                for a in delivery.attempts
            ],
            title="attempts",
        )


def redeliver(
    ctx: typer.Context,
    message_id: Annotated[
        str, typer.Option(help="Deliver this event again (to every subscription it went to).")
    ] = "",
    subscription: Annotated[
        str,
        typer.Option(
            help="With --message-id: only to this subscription. "
            "With --since: replay this subscription's failed and dead deliveries."
        ),
    ] = "",
    since: Annotated[
        str | None,
        typer.Option(
            help="With --subscription: deliveries created since then; ISO 8601 "
            "(UTC unless it names a zone) or a time ago: 90s, 30m, 2h, 7d."
        ),
    ] = None,
) -> None:
    """Deliver again: one event, or a subscription's failed deliveries since a time."""
    if message_id and since is not None:
        raise typer.BadParameter("--since goes with --subscription, not --message-id")
    if not message_id and not (subscription and since is not None):
        raise typer.BadParameter("give --message-id, or --subscription with --since")
    request = pb.RedeliverEventRequest(message_id=message_id, subscription_id=subscription)
    if since is not None:
        request.since.FromDatetime(parse_since(since, now=datetime.now(UTC)))
    settings, client = _client(ctx)
    request.tenant = settings.tenant
    with client:
        answer = client.call(_stub(client).RedeliverEvent, request)
    if settings.output is Output.JSON:
        print_json({"deliveryIds": list(answer.delivery_ids)})
        return
    count = len(answer.delivery_ids)
    typer.echo(f"scheduled {count} {'delivery' if count == 1 else 'deliveries'} again")
    for delivery_id in answer.delivery_ids:
        typer.echo(f"  {delivery_id}")


def parse_since(text: str, *, now: datetime) -> datetime:
    """An ISO 8601 time (UTC when it names no zone), or `now` minus `90s`, `30m`, `2h`, `7d`."""
    try:
        return _since(text.strip(), now=now)
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is neither ISO 8601 (2026-01-02T03:04:05Z) nor a time ago (2h)",
            param_hint="--since",
        ) from None
    except OverflowError:
        raise typer.BadParameter(
            f"'{text}' is before the year 1 or after 9999 in UTC", param_hint="--since"
        ) from None


def _since(text: str, *, now: datetime) -> datetime:
    relative = _RELATIVE.fullmatch(text)
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: int(amount)})
    moment = datetime.fromisoformat(text)
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _state(delivery: pb.Delivery) -> str:
    return enum_text(pb.DeliveryState.Name(delivery.state), _STATE_PREFIX)


def _json(delivery: pb.Delivery) -> dict[str, object]:
    return message_json(delivery)
