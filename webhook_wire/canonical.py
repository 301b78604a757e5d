"""The exact text the platform signs: ``payloadAsString``.

Compact JSON (no insignificant whitespace), keys sorted, UTF-8 characters as themselves: the
same payload always gives the same text. Receivers never re-create it; they verify the text
they received. Numbers keep their kind: ``501`` stays ``501`` and ``501.0`` stays ``501.0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson

__all__ = ["payload_as_string"]


def payload_as_string(payload: Mapping[str, object]) -> str:
    """The canonical JSON text of ``payload``.

    Raises ``ValueError`` for what JSON cannot carry faithfully: NaN or infinite numbers,
    integers beyond 64 bits, non-string keys, strings that are not valid Unicode.
    """
    try:
        text = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except TypeError as error:
        raise ValueError(f"payload is not portable JSON: {error}") from error
    if b"null" in text:
        # orjson writes NaN and infinities as null; only then is a full walk worth it.
        _reject_non_finite(payload)
    return text.decode("utf-8")


def _reject_non_finite(value: object) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"payload is not portable JSON: {value} is not a JSON number")
    if isinstance(value, Mapping):
        for item in value.values():
            _reject_non_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_non_finite(item)
