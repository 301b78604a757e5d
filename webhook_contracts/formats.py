"""The ``format`` values the contracts assert, checked the same way by both validators.

JSON Schema 2020-12 treats ``format`` as an annotation unless asked otherwise; the contracts
use it as an assertion, and give the same checks to the compiled validator and to
``jsonschema`` so that both always agree on what is valid.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from types import MappingProxyType

__all__ = ["FORMAT_CHECKS", "is_date", "is_date_time"]

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_FRACTION = re.compile(r"\.[0-9]+")


def is_date(value: str) -> bool:
    """RFC 3339 ``full-date``: YYYY-MM-DD and a day that exists."""
    if not _DATE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def is_date_time(value: str) -> bool:
    """RFC 3339 ``date-time`` with an existing day and time (leap seconds excluded)."""
    if not _DATE_TIME.fullmatch(value):
        return False
    try:
        # Python 3.11 parses at most six fraction digits; RFC 3339 allows any number.
        datetime.fromisoformat(_FRACTION.sub("", value.upper().replace("Z", "+00:00")))
    except ValueError:
        return False
    return True


FORMAT_CHECKS: Mapping[str, Callable[[str], bool]] = MappingProxyType(
    {"date": is_date, "date-time": is_date_time}
)
