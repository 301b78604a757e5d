"""What commands print on stdout: rich tables for people, one JSON document for scripts."""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

# rich is imported where a table is printed: every run pays for its imports, scripts use JSON.
if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "Output",
    "Row",
    "enum_text",
    "fields_table",
    "message_json",
    "print_json",
    "print_table",
    "stdout",
    "time_text",
]

Row = Sequence[str]


class Output(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


def stdout() -> Console:
    from rich.console import Console

    # Piped tables are still meant to be read (or grepped): wide enough not to fold ids.
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=200 if piped else None, highlight=False)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def message_json(message: Message, *, drop: Sequence[str] = ()) -> dict[str, object]:
    """A message in the protobuf JSON mapping (camelCase names, RFC 3339 times)."""
    value: dict[str, object] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True
    )
    for name in drop:
        value.pop(name, None)
    return value


def time_text(stamp: Timestamp) -> str:
    """UTC to the second, or empty when unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return ""
    return stamp.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")


def enum_text(name: str, prefix: str) -> str:
    """`DELIVERY_STATE_SUCCEEDED` as `succeeded`."""
    return name.removeprefix(prefix).lower()


def print_table(columns: Sequence[str], rows: Sequence[Row], *, title: str | None = None) -> None:
    """A table whose first column (an id) is never wrapped."""
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns, title=title, title_justify="left")
    table.columns[0].no_wrap = True
    for row in rows:
        # Text, not markup: values come from users ('[red]' in a description stays as typed).
        table.add_row(*(Text(cell) for cell in row))
    stdout().print(table)


def fields_table(rows: Sequence[tuple[str, str]]) -> None:
    """One thing as `name  value` lines."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, Text(value))
    stdout().print(table)
