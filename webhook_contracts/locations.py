"""Where in a webhook body a value sits, and how that place is written.

A location is a tuple of keys and array indices from the body's root, so the amount of a
claim is ``("payload", "details", "amount")``. Humans read it dotted
(``payload.details.amount``, ``payload.details.items[0]``); machines get an RFC 6901 JSON
pointer (``/payload/details/amount``), which is what RFC 9457 problem details and
``google.rpc.BadRequest`` field violations carry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["Location", "dotted", "json_pointer", "pointer_tokens"]

Location = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*")


def dotted(location: Iterable[str | int]) -> str:
    """``payload.details.amount``; indices as ``[0]``; odd keys quoted as ``["a.b"]``."""
    text = ""
    for step in location:
        if isinstance(step, int):
            text += f"[{step}]"
        elif _PLAIN_KEY.fullmatch(step):
            text += f".{step}" if text else step
        else:
            text += f"[{json.dumps(step, ensure_ascii=False)}]"
    return text


def json_pointer(location: Iterable[str | int]) -> str:
    """RFC 6901 pointer to the same place, e.g. ``/payload/details/amount``."""
    return "".join("/" + str(step).replace("~", "~0").replace("/", "~1") for step in location)


def pointer_tokens(pointer: str) -> list[str]:
    """The keys an RFC 6901 pointer names, unescaped: ``/$defs/a~1b`` as ``["$defs", "a/b"]``
    (the inverse of `json_pointer`; the empty pointer names the root, no keys)."""
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]
