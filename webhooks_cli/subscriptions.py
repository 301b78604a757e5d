"""`webhooks subscriptions ...`: create, list, show, update, enable, disable, delete."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Annotated

import typer
from google.protobuf import field_mask_pb2

from webhooks.v1 import subscription_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2_grpc as pb_grpc
from webhooks_cli.connection import (
    Client,
    CliError,
    ExitCode,
    Settings,
    collect_pages,
    settings_of,
)
from webhooks_cli.output import Output, fields_table, message_json, print_json, print_table
from webhooks_cli.output import time_text as _time

__all__ = ["app"]

app = typer.Typer(help="Create, list and change subscriptions.", no_args_is_help=True)


class Algorithm(enum.StrEnum):
    ES256 = "ES256"
    RS256 = "RS256"


_ALGORITHMS = {
    Algorithm.ES256: pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256,
    Algorithm.RS256: pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
}
_ALGORITHM_NAMES = {
    pb.SIGNATURE_ALGORITHM_UNSPECIFIED: "ES256 (default)",
    pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256: "ES256",
    pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256: "RS256",
}

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="The subscription's id (sub_...).")]
EtagOption = Annotated[
    str | None,
    typer.Option(help="Change only if the subscription still has this etag (else exit 7)."),
]
TypesOption = Annotated[
    list[str],
    typer.Option(
        "--type",
        "-t",
        help="A messageType (event.claim.created.v1) or a prefix pattern (event.claim.*); "
        "repeat for more.",
    ),
]
SecretOption = Annotated[
    str | None,
    typer.Option(
        envvar="WEBHOOKS_SUBSCRIPTION_SECRET",
        show_envvar=True,
        help="Standard Webhooks secret (whsec_...) for the webhook-signature header; "
        "the environment variable keeps it out of the process list. Never printed.",
    ),
]
AlgorithmOption = Annotated[
    Algorithm | None, typer.Option(help="How deliveries are signed (server default ES256).")
]


def _client(ctx: typer.Context) -> tuple[Settings, Client]:
    settings = settings_of(ctx)
    return settings, Client(settings, settings.subscriptions_addr)


def _stub(client: Client) -> pb_grpc.SubscriptionServiceStub:
    return pb_grpc.SubscriptionServiceStub(client.channel)


@app.command()
def create(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="Where deliveries are POSTed (http or https).")],
    types: TypesOption,
    description: Annotated[str, typer.Option(help="Free text for people.")] = "",
    secret: SecretOption = None,
    algorithm: AlgorithmOption = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
) -> None:
    """Create a subscription (for --tenant when the token is of every tenant)."""
    settings, client = _client(ctx)
    subscription = pb.Subscription(
        tenant=settings.tenant,
        url=url,
        message_types=types,
        description=description,
        enabled=not disabled,
        secret=secret or "",
    )
    if algorithm is not None:
        subscription.signature_algorithm = _ALGORITHMS[algorithm]
    with client:
        created = client.call(
            _stub(client).CreateSubscription,
            pb.CreateSubscriptionRequest(subscription=subscription),
        ).subscription
    _print_one(settings, created)


@app.command("list")
def list_(
    ctx: typer.Context,
    enabled: Annotated[
        bool | None,
        typer.Option("--enabled/--disabled", help="Only enabled, or only disabled ones."),
    ] = None,
    message_type: Annotated[
        str,
        typer.Option(
            "--type", "-t", help="Only those receiving this type (or naming this pattern)."
        ),
    ] = "",
    limit: Annotated[int, typer.Option(min=0, help="At most this many (0: all).")] = 0,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Asked per call.")] = 100,
) -> None:
    """List subscriptions, oldest first, following every page."""
    settings, client = _client(ctx)

    def fetch(token: str, size: int) -> tuple[Sequence[pb.Subscription], str]:
        request = pb.ListSubscriptionsRequest(
            page_size=size, page_token=token, message_type=message_type, tenant=settings.tenant
        )
        if enabled is not None:
            request.enabled = enabled
        page = client.call(_stub(client).ListSubscriptions, request)
        return page.subscriptions, page.next_page_token

    with client:
        found = collect_pages(fetch, limit=limit, page_size=page_size)
    if settings.output is Output.JSON:
        print_json([_json(s) for s in found])
        return
    print_table(
        ["ID", "URL", "TYPES", "ENABLED", "DESCRIPTION", "UPDATED"],
        [
            [
                s.id,
                s.url,
                ", ".join(s.message_types),
                _enabled_text(s),
                s.description,
                _time(s.update_time),
            ]
            for s in found
        ],
    )


@app.command()
def show(ctx: typer.Context, subscription_id: IdArgument) -> None:
    """Show one subscription (its secret is never shown, only whether it has one)."""
    settings, client = _client(ctx)
    with client:
        found = client.call(
            _stub(client).GetSubscription, pb.GetSubscriptionRequest(id=subscription_id)
        ).subscription
    _print_one(settings, found)


@app.command()
def update(
    ctx: typer.Context,
    subscription_id: IdArgument,
    url: Annotated[str | None, typer.Option(help="A new URL.")] = None,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="The new message types: replace all; repeat for more."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="A new description.")] = None,
    secret: SecretOption = None,
    algorithm: AlgorithmOption = None,
    etag: EtagOption = None,
) -> None:
    """Change the given fields, and only those (the update_mask names exactly them)."""
    changes = pb.Subscription(id=subscription_id, etag=etag or "")
    paths: list[str] = []
    if url is not None:
        changes.url = url
        paths.append("url")
    if types:
        changes.message_types.extend(types)
        paths.append("message_types")
    if description is not None:
        changes.description = description
        paths.append("description")
    if secret is not None:
        changes.secret = secret
        paths.append("secret")
    if algorithm is not None:
        changes.signature_algorithm = _ALGORITHMS[algorithm]
        paths.append("signature_algorithm")
    if not paths:
        raise CliError(
            "nothing to update: give --url, --type, --description, --secret or --algorithm",
            ExitCode.USAGE,
        )
    _update(ctx, changes, paths)


@app.command()
def enable(ctx: typer.Context, subscription_id: IdArgument, etag: EtagOption = None) -> None:
    """Enable a subscription (its disabled reason is cleared)."""
    _update(ctx, pb.Subscription(id=subscription_id, enabled=True, etag=etag or ""), ["enabled"])


@app.command()
def disable(
    ctx: typer.Context,
    subscription_id: IdArgument,
    reason: Annotated[str | None, typer.Option(help="Why, recorded on the subscription.")] = None,
    etag: EtagOption = None,
) -> None:
    """Disable a subscription: its events are no longer delivered."""
    changes = pb.Subscription(id=subscription_id, enabled=False, etag=etag or "")
    paths = ["enabled"]
    if reason is not None:
        changes.disabled_reason = reason
        paths.append("disabled_reason")
    _update(ctx, changes, paths)


@app.command()
def delete(ctx: typer.Context, subscription_id: IdArgument, etag: EtagOption = None) -> None:
    """Delete a subscription."""
    settings, client = _client(ctx)
    with client:
        client.call(
            _stub(client).DeleteSubscription,
            pb.DeleteSubscriptionRequest(id=subscription_id, etag=etag or ""),
        )
    if settings.output is Output.JSON:
        print_json({"id": subscription_id, "deleted": True})
    else:
        typer.echo(f"deleted {subscription_id}")


def _update(ctx: typer.Context, changes: pb.Subscription, paths: list[str]) -> None:
    settings, client = _client(ctx)
    request = pb.UpdateSubscriptionRequest(
        subscription=changes, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    with client:
        updated = client.call(_stub(client).UpdateSubscription, request).subscription
    _print_one(settings, updated)


def _print_one(settings: Settings, subscription: pb.Subscription) -> None:
    if settings.output is Output.JSON:
        print_json(_json(subscription))
        return
    fields_table(
        [
            ("id", subscription.id),
            ("tenant", subscription.tenant),
            ("url", subscription.url),
            ("message types", "\n".join(subscription.message_types)),
            ("enabled", _enabled_text(subscription)),
            ("description", subscription.description),
            ("signature", _ALGORITHM_NAMES.get(subscription.signature_algorithm, "unknown")),
            ("secret", "yes" if subscription.has_secret else "no"),
            ("etag", subscription.etag),
            ("created", _time(subscription.create_time)),
            ("updated", _time(subscription.update_time)),
        ]
    )


def _enabled_text(subscription: pb.Subscription) -> str:
    if subscription.enabled:
        return "yes"
    reason = subscription.disabled_reason
    return f"no ({reason})" if reason else "no"


def _json(subscription: pb.Subscription) -> dict[str, object]:
    # `secret` is input only: always empty in an answer, so it is left out.
    return message_json(subscription, drop=["secret"])
