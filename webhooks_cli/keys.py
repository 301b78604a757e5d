"""`webhooks keys list`: the public keys that verify delivery signatures."""

from __future__ import annotations

import typer

from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import dispatcher_service_pb2_grpc as pb_grpc
from webhooks.v1 import subscription_service_pb2 as subscription_pb
from webhooks_cli.connection import Client, settings_of
from webhooks_cli.output import Output, message_json, print_json, print_table, time_text

__all__ = ["app"]

app = typer.Typer(help="The platform's signing keys.", no_args_is_help=True)

_ALGORITHMS = {
    subscription_pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256: "ES256",
    subscription_pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256: "RS256",
}


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List the public signing keys, newest first (with --output json, their PEM too)."""
    settings = settings_of(ctx)
    with Client(settings, settings.dispatcher_addr) as client:
        stub = pb_grpc.DispatcherServiceStub(client.channel)
        keys = client.call(stub.ListSigningKeys, pb.ListSigningKeysRequest()).keys
    if settings.output is Output.JSON:
        print_json([message_json(key) for key in keys])
        return
    print_table(
        ["KEY ID", "ALGORITHM", "ACTIVE", "CREATED"],
        [
            [
                key.key_id,
                _ALGORITHMS.get(key.algorithm, "unknown"),
                "yes" if key.active else "no (retired)",
                time_text(key.create_time),
            ]
            for key in keys
        ],
    )
