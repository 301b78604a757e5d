"""`webhooks events publish`: one event with PublishEvent, many over the PublishEvents stream."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import typer

from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import dispatcher_service_pb2_grpc as pb_grpc
from webhooks_cli.connection import Client, CliError, ExitCode, Settings, settings_of
from webhooks_cli.event_input import InvalidEvent, json_field_name, parse_event
from webhooks_cli.output import Output, print_json, print_table

__all__ = ["app"]

Outcome = pb.PublishResult
# The dispatcher takes at most 500 events per request.
MAX_BATCH = 500

app = typer.Typer(help="Publish events.", no_args_is_help=True)


@app.command(
    epilog="An event is the payload receivers get: "
    '{"messageId": "...", "timestamp": "2021-10-14T15:33:16.848Z", '
    '"details": {"messageType": "event.claim.created.v1", ...}, '
    '"user": {"id": "...", "poolId": "...", "originator": "ClientAPI"}}. '
    "A missing messageId is generated (uuid4) and printed; a missing timestamp is the time "
    "the event is accepted; user is optional. A documented example "
    '({"payload": {...}, "signature": ...}) can be pasted as it is. '
    "With a token of every tenant, name the tenant with --tenant."
)
def publish(
    ctx: typer.Context,
    file: Annotated[
        typer.FileText,
        typer.Argument(
            metavar="[FILE|-]",
            encoding="utf-8",
            help="The JSON file (JSON lines with --jsonl); - for stdin.",
        ),
    ] = "-",  # type: ignore[assignment]  # click opens the name as a file
    jsonl: Annotated[
        bool,
        typer.Option(
            "--jsonl",
            help="FILE holds one event per line (JSON lines; blank lines skipped): sent in "
            "batches over one stream, then a summary naming each rejected line and field "
            "(a line that is no valid event is rejected without being sent); exit 1 if any "
            "was rejected.",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_BATCH, help="Events per batch with --jsonl.")
    ] = 100,
) -> None:
    """Publish one event from a JSON file or stdin, or many with --jsonl."""
    settings = settings_of(ctx)
    if getattr(file, "name", "") == "<stdin>" and sys.stdin.isatty():
        # Otherwise a person who forgot FILE just sees the command hang.
        sys.stderr.write("reading from stdin; end with Ctrl-D\n")
    try:
        if jsonl:
            _publish_many(settings, file, batch_size)
        else:
            _publish_one(settings, file.read())
    except UnicodeDecodeError as error:
        raise CliError(
            f"{getattr(file, 'name', 'FILE')} is not UTF-8 text, which JSON must be "
            f"(it holds the byte 0x{error.object[error.start]:02x})",
            ExitCode.USAGE,
        ) from None


def _publish_one(settings: Settings, text: str) -> None:
    try:
        event = parse_event(text, tenant=settings.tenant)
    except InvalidEvent as invalid:
        raise CliError("the event is not valid", ExitCode.INVALID, invalid.violations) from None
    with Client(settings, settings.dispatcher_addr) as client:
        stub = pb_grpc.DispatcherServiceStub(client.channel)
        try:
            result = client.call(stub.PublishEvent, pb.PublishEventRequest(event=event)).result
        except CliError as error:
            error.violations = [(json_field_name(n), why) for n, why in error.violations]
            raise
    outcome = _OUTCOMES.get(result.outcome, "unknown")
    if settings.output is Output.JSON:
        print_json(
            {"messageId": result.message_id, "outcome": outcome, "deliveries": result.deliveries}
        )
    elif outcome == "accepted":
        plural = "delivery" if result.deliveries == 1 else "deliveries"
        typer.echo(f"accepted {result.message_id} ({result.deliveries} {plural})")
    else:
        typer.echo(f"{outcome} {result.message_id} (already published: not delivered again)")


@dataclass
class _Line:
    """One line of a JSON-lines file: its event, or why it cannot be sent."""

    number: int
    event: pb.Event | None = None
    invalid: InvalidEvent | None = None


@dataclass(frozen=True)
class _Rejection:
    line: int
    message_id: str
    code: str
    message: str
    violations: list[tuple[str, str]]

    def json(self) -> dict[str, object]:
        return {
            "line": self.line,
            "messageId": self.message_id,
            "code": self.code,
            "message": self.message,
            "fieldViolations": [{"field": n, "description": why} for n, why in self.violations],
        }


@dataclass
class _Summary:
    accepted: int = 0
    duplicate: int = 0
    rejected: list[_Rejection] = field(default_factory=list)


def _read_lines(file: typer.FileText, tenant: str) -> list[_Line]:
    lines: list[_Line] = []
    for number, text in enumerate(file, start=1):
        if not text.strip():
            continue
        try:
            lines.append(_Line(number, event=parse_event(text, tenant=tenant)))
        except InvalidEvent as invalid:
            lines.append(_Line(number, invalid=invalid))
    return lines


def _publish_many(settings: Settings, file: typer.FileText, batch_size: int) -> None:
    lines = _read_lines(file, settings.tenant)
    summary = _Summary()
    for line in lines:
        if line.invalid is not None:
            summary.rejected.append(
                _Rejection(
                    line.number,
                    line.invalid.message_id,
                    "INVALID_ARGUMENT",
                    "not sent: the line is no valid event",
                    line.invalid.violations,
                )
            )
    sendable = [line for line in lines if line.event is not None]
    batches = [sendable[i : i + batch_size] for i in range(0, len(sendable), batch_size)]
    failure: CliError | None = None
    if batches:
        # Outside the try: without a token nothing was sent, and there is nothing to sum up.
        client = Client(settings, settings.dispatcher_addr)
        try:
            _send(client, batches, summary)
        except CliError as error:
            failure = error
        finally:
            client.channel.close()
    _print_summary(settings, summary, unanswered=failure is not None)
    if failure is not None:
        raise failure
    if summary.rejected:
        raise typer.Exit(ExitCode.PARTIAL)


def _send(client: Client, batches: Sequence[Sequence[_Line]], summary: _Summary) -> None:
    from rich.console import Console
    from rich.progress import Progress

    def requests() -> Iterator[pb.PublishEventsRequest]:
        for batch in batches:
            yield pb.PublishEventsRequest(events=[line.event for line in batch if line.event])

    total = sum(len(batch) for batch in batches)
    # On stderr, and only for a person watching: stdout stays the summary alone.
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("publishing", total=total)
        stub = pb_grpc.DispatcherServiceStub(client.channel)
        # The deadline covers the whole stream: --timeout for each batch.
        answers = client.stream(
            stub.PublishEvents, requests(), timeout=client.timeout * len(batches)
        )
        answered = 0
        for batch, answer in zip(batches, answers, strict=False):
            for line, result in zip(batch, answer.results, strict=False):
                _count(summary, line, result)
            answered += 1
            progress.advance(task, len(batch))
    if answered < len(batches):
        raise CliError(
            f"{client.addr} ended the stream with {len(batches) - answered} batches unanswered",
            ExitCode.UNAVAILABLE,
        )


def _count(summary: _Summary, line: _Line, result: pb.PublishResult) -> None:
    if result.outcome == Outcome.OUTCOME_ACCEPTED:
        summary.accepted += 1
    elif result.outcome == Outcome.OUTCOME_DUPLICATE:
        summary.duplicate += 1
    else:
        error = result.error
        violations = [(json_field_name(v.field), v.description) for v in error.field_violations]
        summary.rejected.append(
            _Rejection(line.number, result.message_id, error.code, error.message, violations)
        )


def _print_summary(settings: Settings, summary: _Summary, *, unanswered: bool) -> None:
    rejected = sorted(summary.rejected, key=lambda r: r.line)
    if settings.output is Output.JSON:
        print_json(
            {
                "accepted": summary.accepted,
                "duplicate": summary.duplicate,
                "rejected": len(rejected),
                "complete": not unanswered,
                "rejections": [r.json() for r in rejected],
            }
        )
        return
    typer.echo(
        f"accepted {summary.accepted}, duplicate {summary.duplicate}, rejected {len(rejected)}"
        + (" (stopped early: the events not counted were not acknowledged)" if unanswered else "")
    )
    if rejected:
        print_table(
            ["LINE", "MESSAGE ID", "CODE", "FIELD", "WHY"],
            [
                [str(r.line), r.message_id, r.code, name, why]
                for r in rejected
                for name, why in (r.violations or [("", r.message)])
            ],
            title="rejected",
        )


_OUTCOMES = {
    Outcome.OUTCOME_ACCEPTED: "accepted",
    Outcome.OUTCOME_DUPLICATE: "duplicate",
    Outcome.OUTCOME_REJECTED: "rejected",
}
