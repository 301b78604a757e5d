"""Reading a posted form or a query: each field as trimmed text, and nothing else.

A field posted as a file (or missing) reads as empty text: the console's forms have none.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["field_text"]


def field_text(fields: Mapping[str, object], name: str) -> str:
    """The text of field `name`, trimmed; empty when missing or not text."""
    value = fields.get(name, "")
    return value.strip() if isinstance(value, str) else ""
