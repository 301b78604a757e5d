"""JSON pointers of the contracts' locations, written and read back."""

from __future__ import annotations

import pytest

from webhook_contracts.locations import json_pointer, pointer_tokens


@pytest.mark.parametrize(
    ("pointer", "tokens"),
    [
        ("", []),
        ("/$defs/date", ["$defs", "date"]),
        ("/$defs/types.json/$defs/minorUnits", ["$defs", "types.json", "$defs", "minorUnits"]),
        ("/a~1b/c~0d/~01", ["a/b", "c~d", "~1"]),
        ("/", [""]),
    ],
)
def test_pointer_tokens_unescapes_each_key(pointer: str, tokens: list[str]) -> None:
    assert pointer_tokens(pointer) == tokens


def test_pointer_tokens_reads_back_what_json_pointer_writes() -> None:
    location = ("payload", "a/b", "~x", "items", 3)
    assert pointer_tokens(json_pointer(location)) == ["payload", "a/b", "~x", "items", "3"]
