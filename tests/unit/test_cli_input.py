"""What the `webhooks` command makes of its input: event JSON, --since, page tokens, errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from google.rpc import status_pb2
from grpc_status import rpc_status
from typer.testing import CliRunner

from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks_cli.connection import (
    CliError,
    ExitCode,
    Settings,
    collect_pages,
    error_of,
    settings_of,
)
from webhooks_cli.deliveries import parse_since
from webhooks_cli.event_input import InvalidEvent, event_of, parse_event
from webhooks_cli.main import _global_options_first, app
from webhooks_cli.output import Output

PAYLOAD: dict[str, Any] = {
    "details": {"messageType": "event.claim.created.v1", "amount": 501, "ratio": 0.5},
    "messageId": "09feeb6f-350a-430a-a040-cd1c558cbc91",
    "timestamp": "2021-10-14T15:33:16.848Z",
    "user": {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"},
}


def test_a_payload_becomes_an_event() -> None:
    event = parse_event(json.dumps(PAYLOAD), tenant="acme")
    assert event.tenant == "acme"
    assert event.message_id == PAYLOAD["messageId"]
    assert event.message_type == "event.claim.created.v1"
    assert json.loads(event.details) == PAYLOAD["details"]
    assert '"amount":501' in event.details  # an integer stays an integer
    assert event.timestamp.ToDatetime(tzinfo=UTC) == datetime(
        2021, 10, 14, 15, 33, 16, 848000, tzinfo=UTC
    )
    assert event.user == pb.EventUser(id="USER_ID", pool_id="POOL_ID", originator="ClientAPI")


def test_a_documented_example_is_taken_as_it_is() -> None:
    example = {"payload": PAYLOAD, "signature": "SIGNATURE"}
    assert event_of(example, tenant="") == event_of(PAYLOAD, tenant="")


def test_only_details_are_required() -> None:
    event = event_of({"details": {"messageType": "event.note.created.v1"}}, tenant="")
    uuid.UUID(event.message_id)  # generated
    assert not event.HasField("timestamp")
    assert not event.HasField("user")


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ([], ["body"]),
        ({}, ["details"]),
        ({"details": {}}, ["details.messageType"]),
        ({**PAYLOAD, "messageID": "x"}, ["messageID"]),
        ({**PAYLOAD, "messageId": 5}, ["messageId"]),
        ({**PAYLOAD, "timestamp": "2021-10-14 15:33"}, ["timestamp"]),  # no time zone
        ({**PAYLOAD, "timestamp": "yesterday"}, ["timestamp"]),
        ({**PAYLOAD, "user": "me"}, ["user"]),
        ({**PAYLOAD, "user": {"id": "U", "pool": "P"}}, ["user.poolId", "user.originator"]),
    ],
)
def test_wrong_fields_are_named(value: object, fields: list[str]) -> None:
    with pytest.raises(InvalidEvent) as raised:
        event_of(value, tenant="")
    named = [name for name, _ in raised.value.violations]
    assert all(field in named for field in fields), named


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{", "body"),
        ('{"details": NaN}', "details"),
        ('{"details": {"amount": 1e999}}', "details.amount"),
        ('{"details": {"n": 18446744073709551616}}', "details.n"),
        ('{"details": {}, "details": {}}', "body"),
        ('{"user": {"id": "\\ud800"}}', "user.id"),
        ("[" * 100_000, "body"),
    ],
)
def test_text_that_is_no_portable_json_is_refused_naming_where(text: str, field: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        parse_event(text, tenant="")
    assert [name for name, _ in raised.value.violations] == [field]


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "99999999999d"]
)
def test_a_since_outside_the_years_1_to_9999_is_a_usage_error(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="before the year 1 or after 9999"):
        parse_since(text, now=datetime(2026, 1, 2, tzinfo=UTC))


def test_since_is_a_time_or_a_time_ago() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_since("2h", now=now) == now - timedelta(hours=2)
    assert parse_since("90s", now=now) == now - timedelta(seconds=90)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("2026-01-01T00:00:00Z", now=now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("2026-01-01T00:00:00", now=now) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        parse_since("last week", now=now)


def test_pages_are_followed_up_to_the_limit() -> None:
    asked: list[tuple[str, int]] = []
    pages = {"": ([1, 2], "a"), "a": ([3, 4], "b"), "b": ([5], "")}

    def fetch(token: str, size: int) -> tuple[Sequence[int], str]:
        asked.append((token, size))
        return pages[token]

    assert collect_pages(fetch, limit=0, page_size=2) == [1, 2, 3, 4, 5]
    asked.clear()
    assert collect_pages(fetch, limit=3, page_size=2) == [1, 2, 3]
    assert asked == [("", 2), ("a", 1)]


def test_a_repeated_page_token_ends_the_listing() -> None:
    assert collect_pages(lambda token, size: ([0], "same"), limit=0, page_size=1) == [0, 0]


class _Failed(grpc.RpcError, grpc.Call):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.NOT_FOUND, ExitCode.NOT_FOUND),
        (grpc.StatusCode.UNAUTHENTICATED, ExitCode.DENIED),
        (grpc.StatusCode.PERMISSION_DENIED, ExitCode.DENIED),
        (grpc.StatusCode.INVALID_ARGUMENT, ExitCode.INVALID),
        (grpc.StatusCode.UNAVAILABLE, ExitCode.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ExitCode.UNAVAILABLE),
        (grpc.StatusCode.FAILED_PRECONDITION, ExitCode.CONFLICT),
        (grpc.StatusCode.ALREADY_EXISTS, ExitCode.CONFLICT),
        (grpc.StatusCode.INTERNAL, ExitCode.PARTIAL),
    ],
)
def test_status_codes_become_exit_codes(code: grpc.StatusCode, exit_code: ExitCode) -> None:
    error = error_of(_Failed(code, "it went\nwrong"), addr="127.0.0.1:1")
    assert error.exit_code == exit_code
    assert code.name in error.message


def test_the_token_file_is_read_only_when_needed(tmp_path: Path) -> None:
    settings = Settings("a:1", "b:2", Output.TABLE, 1.0, token_file=tmp_path / "missing")
    with pytest.raises(CliError) as raised:
        settings.bearer_token()
    assert raised.value.exit_code == ExitCode.USAGE


def test_settings_never_show_the_token() -> None:
    assert "s3cr3t" not in repr(Settings("a:1", "b:2", Output.TABLE, 1.0, token="s3cr3t"))


@pytest.mark.parametrize(
    ("args", "env", "code", "said"),
    [
        (["subscriptions", "update", "sub_x"], {"WEBHOOKS_TOKEN": "t"}, 2, "nothing to update"),
        (["subscriptions", "list"], {}, 4, "no token"),
        (["--token", "t", "--token-file", "f", "keys", "list"], {}, 2, "not both"),
        (["redeliver", "--subscription", "sub_x"], {"WEBHOOKS_TOKEN": "t"}, 2, "--since"),
        (["redeliver", "--message-id", "m", "--since", "2h"], {}, 2, "--since"),
        (["redeliver", "--subscription", "s", "--since", "soon"], {}, 2, "ISO 8601"),
    ],
)
def test_usage_is_checked_before_any_call(
    args: list[str], env: dict[str, str], code: int, said: str
) -> None:
    # Addresses nothing listens on: these must fail before any call is made.
    closed = {
        "WEBHOOKS_SUBSCRIPTIONS_ADDR": "127.0.0.1:9",
        "WEBHOOKS_DISPATCHER_ADDR": "127.0.0.1:9",
    }
    result = CliRunner().invoke(app, args, env={"WEBHOOKS_TOKEN": "", **closed, **env})
    assert result.exit_code == code, result.output
    assert said in result.stderr


def test_the_token_on_the_command_line_beats_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    seen: list[str] = []

    @app.command("whoami", hidden=True)
    def whoami(ctx: typer.Context) -> None:
        seen.append(settings_of(ctx).bearer_token())

    try:
        runner = CliRunner()
        runner.invoke(
            app, ["--token-file", str(token_file), "whoami"], env={"WEBHOOKS_TOKEN": "env"}
        )
        runner.invoke(
            app, ["--token", "line", "whoami"], env={"WEBHOOKS_TOKEN_FILE": str(token_file)}
        )
    finally:
        app.registered_commands.pop()
    assert seen == ["from-the-file", "line"]


class _Answered(_Failed):
    """A failed call whose status the service sent itself, as the services do."""

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        status = status_pb2.Status(code=self._code.value[0], message=self._details)
        metadata: tuple[tuple[str, str | bytes], ...] = rpc_status.to_status(
            status
        ).trailing_metadata
        return metadata


def test_an_unavailable_answer_of_a_reached_service_does_not_say_it_cannot_be_reached() -> None:
    failed = _Answered(grpc.StatusCode.UNAVAILABLE, "routing is not loaded yet; retry shortly")
    error = error_of(failed, addr="127.0.0.1:50052")
    assert error.message == (
        "127.0.0.1:50052 answered: routing is not loaded yet; retry shortly (UNAVAILABLE)"
    )
    assert error.exit_code == ExitCode.UNAVAILABLE
    unreachable = error_of(_Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect"), addr="a:1")
    assert unreachable.message.startswith("cannot reach a:1: ")


@pytest.mark.parametrize("jsonl", [[], ["--jsonl"]])
def test_an_event_file_that_is_not_utf8_is_one_error_line_and_a_usage_error(
    tmp_path: Path, jsonl: list[str]
) -> None:
    event = tmp_path / "event.json"
    event.write_bytes(b'{"details": {"messageType": "event.claim.created.v1", "n": "\xff"}}\n')
    result = CliRunner().invoke(
        app,
        ["events", "publish", *jsonl, str(event)],
        env={"WEBHOOKS_TOKEN": "t", "WEBHOOKS_DISPATCHER_ADDR": "127.0.0.1:9"},
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert (
        result.stderr
        == f"error: {event} is not UTF-8 text, which JSON must be (it holds the byte 0xff)\n"
    )
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "args",
    [
        ["--tenant", "bad tenant!", "subscriptions", "list"],
        ["subscriptions", "list", "--tenant", "bad tenant!"],
        ["deliveries", "list", "--tenant=bad tenant!"],
    ],
)
def test_a_malformed_tenant_is_a_usage_error_naming_the_option(args: list[str]) -> None:
    result = CliRunner().invoke(
        app, args, env={"WEBHOOKS_TOKEN": "t", "WEBHOOKS_SUBSCRIPTIONS_ADDR": "127.0.0.1:9"}
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--tenant" in result.stderr
    assert "letters, digits" in result.stderr


def test_global_options_are_taken_after_the_command_too() -> None:
    seen: list[Settings] = []

    @app.command("probe", hidden=True)
    def probe(ctx: typer.Context) -> None:
        seen.append(settings_of(ctx))

    try:
        runner = CliRunner()
        for args in (
            ["probe", "-o", "json", "--tenant", "acme", "--timeout=2.5"],
            ["-o", "table", "probe", "-ojson", "--tenant=acme", "--timeout", "2.5"],
        ):
            result = runner.invoke(app, args, env={"WEBHOOKS_TOKEN": "t"})
            assert result.exit_code == 0, result.output
    finally:
        app.registered_commands.pop()
    for settings in seen:
        assert (settings.output, settings.tenant, settings.timeout) == (Output.JSON, "acme", 2.5)


def test_only_global_options_move_and_nothing_after_a_double_dash() -> None:
    names = frozenset({"-o", "--output", "--tenant"})
    assert _global_options_first(
        ["--tenant", "a", "subscriptions", "list", "--type", "t", "-o", "json", "--", "-o", "x"],
        names,
    ) == ["--tenant", "a", "-o", "json", "subscriptions", "list", "--type", "t", "--", "-o", "x"]
