"""Equality of parsed JSON values, as JSON means it.

Python's ``==`` says ``1 == 1.0 == True``; JSON text tells them apart, and a payload whose
``501`` became ``501.0`` or ``true`` is not the payload that was signed. Objects compare
without regard to key order, as JSON objects do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from webhook_contracts.locations import Location

__all__ = ["first_difference", "same_json"]


def same_json(left: object, right: object) -> bool:
    return first_difference(left, right) is None


def first_difference(left: object, right: object, location: Location = ()) -> Location | None:
    """Where ``left`` and ``right`` first differ (depth first), or None when they are equal."""
    kind = _kind(left)
    if kind != _kind(right):
        return location
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return _first_difference_in_objects(left, right, location)
    if kind == "array" and isinstance(left, Sequence) and isinstance(right, Sequence):
        if len(left) != len(right):
            return location
        for index, (mine, theirs) in enumerate(zip(left, right, strict=True)):
            if (found := first_difference(mine, theirs, (*location, index))) is not None:
                return found
        return None
    return None if left == right else location


def _first_difference_in_objects(
    left: Mapping[object, object], right: Mapping[object, object], location: Location
) -> Location | None:
    if left.keys() != right.keys():
        return (*location, min(str(key) for key in left.keys() ^ right.keys()))
    for key, value in left.items():
        if (found := first_difference(value, right[key], (*location, str(key)))) is not None:
            return found
    return None


def _kind(value: object) -> str:
    # bool before int: True is an int to Python, not to JSON.
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__
