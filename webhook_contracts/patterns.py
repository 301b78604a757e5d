"""messageType patterns, as subscriptions use them.

A pattern is an exact messageType (``event.claim.created.v1``), a prefix ending in ``.*``
(``event.claim.*`` matches ``event.claim.created.v1`` but not ``event.claimMeta.updated.v1``:
the prefix ends at a dot), or ``*`` for every type.
"""

from __future__ import annotations

import re

from .errors import InvalidPattern

__all__ = ["ANY", "check_pattern", "is_pattern", "matches"]

ANY = "*"

_SEGMENT = r"[A-Za-z0-9_-]+"
_EXACT = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_PREFIX = re.compile(rf"(?:{_SEGMENT}\.)+\*")


def is_pattern(pattern: str) -> bool:
    """True when ``pattern`` is well formed (whether or not any type matches it)."""
    return pattern == ANY or bool(_EXACT.fullmatch(pattern) or _PREFIX.fullmatch(pattern))


def check_pattern(pattern: str) -> str:
    """``pattern`` itself, or ``InvalidPattern``."""
    if not is_pattern(pattern):
        raise InvalidPattern(pattern)
    return pattern


def matches(pattern: str, message_type: str) -> bool:
    """Whether ``message_type`` is selected by the (well-formed) ``pattern``."""
    if pattern == ANY:
        return True
    if pattern.endswith(".*"):
        return message_type.startswith(pattern[:-1])
    return message_type == pattern
