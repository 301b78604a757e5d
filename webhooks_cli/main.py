"""Entry point of the `webhooks` command: the global options and the command tree.

Exit codes a script can rely on:

    0  success
    1  partial failure (some events of `events publish --jsonl` rejected), or another error
    2  usage error: a wrong or missing option or argument
    3  not found (also another tenant's id)
    4  unauthenticated or permission denied (no token, an unknown token, a missing scope)
    5  invalid argument: the server refused the input; each wrong field is printed
    6  unavailable: cannot connect (also a failed TLS handshake), no answer within --timeout,
       or the server is overloaded
    7  conflict: a stale --etag (FAILED_PRECONDITION), or ALREADY_EXISTS

Errors go to stderr as one line, plus one line per wrong field; results go to stdout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

# gRPC's C core reports a failed TLS handshake on stderr by itself; the command says it once,
# in its own words. Read when grpc is first imported, hence here; a GRPC_VERBOSITY given wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import typer
from typer.core import TyperGroup

from service_common.auth import validate_tenant
from service_common.errors import InvalidArgument
from webhooks_cli import deliveries, events, keys, subscriptions
from webhooks_cli.connection import CliError, Settings, error_of
from webhooks_cli.output import Output

__all__ = ["app"]

EXIT_CODES = "\n".join(
    [
        "Exit codes:",
        "0 success",
        "1 partial failure (some events of a --jsonl publish rejected), or another error",
        "2 usage error",
        "3 not found",
        "4 unauthenticated or permission denied",
        "5 invalid argument: the server refused the input (each wrong field is printed)",
        "6 unavailable: cannot connect (also a failed TLS handshake), deadline exceeded, "
        "server overloaded",
        "7 conflict: stale etag (FAILED_PRECONDITION), already exists",
    ]
)


class _Commands(TyperGroup):
    """Ends every command's CliError the same way: its lines on stderr, its exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = _global_options_first(args, self._value_options())
        result: list[str] = super().parse_args(ctx, args)
        return result

    def _value_options(self) -> frozenset[str]:
        """The names of the global options that take a value (all of them but --help)."""
        return frozenset(
            name
            for param in self.params
            if param.param_type_name == "option" and not getattr(param, "is_flag", False)
            for name in param.opts
        )

    def invoke(self, ctx: Any) -> Any:  # a typer._click.Context, a private module
        try:
            return super().invoke(ctx)
        except CliError as error:
            error.show()
            raise typer.Exit(error.exit_code) from None
        except grpc.RpcError as error:  # a call outside Client: still no traceback
            failure = error_of(error, addr="the service")
            failure.show()
            raise typer.Exit(failure.exit_code) from None


def _global_options_first(args: list[str], names: frozenset[str]) -> list[str]:
    """`webhooks subscriptions list -o json` read as `webhooks -o json subscriptions list`.

    Click takes a group's options only before its command; people and scripts put `-o json`
    or `--tenant` at the end as often as not. A global option (one of `names`, each taking a
    value) given after the command moves to just before it, so it still wins over one given
    earlier. `--` ends the options: what follows it stays where it is.
    """
    rest = list(args)
    head: list[str] = []
    while rest and rest[0].startswith("-") and rest[0] != "--":
        option = rest.pop(0)
        head.append(option)
        if option in names and rest:
            head.append(rest.pop(0))
    moved: list[str] = []
    tail: list[str] = []
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            tail += [arg, *rest]
            break
        name = arg.partition("=")[0] if arg.startswith("--") else arg[:2]
        if name not in names:
            tail.append(arg)
            continue
        moved.append(arg)
        if arg == name and rest:  # `--output json`, not `--output=json` or `-ojson`
            moved.append(rest.pop(0))
    return head + moved + tail


def _tenant(value: str) -> str:
    if value:
        try:
            validate_tenant(value, field="--tenant")
        except InvalidArgument as invalid:
            raise typer.BadParameter(invalid.violations[0].description) from None
    return value


app = typer.Typer(
    cls=_Commands,
    help="Manage subscriptions, publish events and follow deliveries, over gRPC.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    # Locals may hold the token: never shown, even for a bug.
    pretty_exceptions_show_locals=False,
)
app.add_typer(subscriptions.app, name="subscriptions")
app.add_typer(events.app, name="events")
app.add_typer(deliveries.app, name="deliveries")
app.command(epilog=EXIT_CODES)(deliveries.redeliver)
app.add_typer(keys.app, name="keys")


@app.callback()
def options(
    ctx: typer.Context,
    subscriptions_addr: Annotated[
        str,
        typer.Option(
            envvar="WEBHOOKS_SUBSCRIPTIONS_ADDR", help="host:port of the subscription service."
        ),
    ] = "127.0.0.1:50051",
    dispatcher_addr: Annotated[
        str, typer.Option(envvar="WEBHOOKS_DISPATCHER_ADDR", help="host:port of the dispatcher.")
    ] = "127.0.0.1:50052",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="WEBHOOKS_TOKEN",
            show_default=False,
            help="Bearer token (visible to other users in the process list: prefer --token-file).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(envvar="WEBHOOKS_TOKEN_FILE", help="A file holding the bearer token."),
    ] = None,
    tenant: Annotated[
        str,
        typer.Option(
            envvar="WEBHOOKS_TENANT",
            callback=_tenant,
            help="The tenant to act for, with a token of every tenant (*).",
        ),
    ] = "",
    output: Annotated[
        Output,
        typer.Option(
            "--output",
            "-o",
            envvar="WEBHOOKS_OUTPUT",
            help="table for people; json for scripts (one document on stdout).",
        ),
    ] = Output.TABLE,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.1, envvar="WEBHOOKS_TIMEOUT", help="Seconds each call (each batch) may take."
        ),
    ] = 10.0,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="WEBHOOKS_TLS_CA_FILE",
            help="PEM CA certificate(s) the services' certificates are checked against; "
            "given, every call goes over TLS.",
        ),
    ] = None,
    cert_file: Annotated[
        Path | None,
        typer.Option(
            envvar="WEBHOOKS_TLS_CERT_FILE",
            help="PEM client certificate, for services that require mutual TLS.",
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(envvar="WEBHOOKS_TLS_KEY_FILE", help="PEM private key of --cert-file."),
    ] = None,
) -> None:
    """Operate the webhook platform: subscriptions, events, deliveries, signing keys."""
    given_token, given_file = _token_source(ctx, token, token_file)
    ctx.obj = Settings(
        subscriptions_addr=subscriptions_addr,
        dispatcher_addr=dispatcher_addr,
        output=output,
        timeout=timeout,
        tenant=tenant,
        token=given_token,
        token_file=given_file,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def _token_source(
    ctx: typer.Context, token: str | None, token_file: Path | None
) -> tuple[str | None, Path | None]:
    """--token or --token-file: the command line before the environment, never both at once."""
    if token is None or token_file is None:
        return token, token_file
    from_line = {
        name
        for name in ("token", "token_file")
        if (source := ctx.get_parameter_source(name)) is not None and source.name == "COMMANDLINE"
    }
    if len(from_line) == 1:
        return (token, None) if "token" in from_line else (None, token_file)
    where = "options" if from_line else "environment variables"
    raise typer.BadParameter(f"give a token or a token file, not both (two {where})")
