"""The JSON of the wire format: what both ends may send, read without recursion limits.

A document is refused, never changed, when reading it as ordinary parsers do would lose
something or fail: it is not valid JSON; a number is not finite or overflows a double
(``1e999``); an integer falls outside the signed 64-bit range (many parsers turn it into
a float, i.e. into another number); a string holds a lone surrogate; an object holds a key
twice (parsers disagree on which one wins); or arrays and objects nest deeper than a bound
(parsers that recurse give up, or crash, at some depth of their own).

orjson reads every document first: it refuses most of the above itself and keeps its own
depth limit. What it cannot see, a repeated key (it keeps the last) and an integer beyond
64 bits (it reads a float), has a trace that is cheap to look for: fewer keys than the text
has key ends, or a float as large as such an integer. Only a document with such a trace is
read again, with the standard parser, once its depth is known to be small.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from webhook_contracts.locations import Location

__all__ = ["MAX_DEPTH", "JsonRefused", "loads"]

# Deep enough for any event and the webhook body around it; shallow enough for every common
# parser's default (.NET's System.Text.Json stops at 64).
MAX_DEPTH = 64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# orjson reads an integer beyond 64 bits as a float at least this large.
_INT64_MAGNITUDE = float(2**63)
# A key end written with white space before its colon.
_SPACED_KEY_END = re.compile(r'"[ \t\r\n]+:')
# Strings (with their escapes) and brackets, to measure nesting without parsing.
_NESTING_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class JsonRefused(ValueError):
    """The document cannot travel unchanged. `path` is where, from the document's root."""

    def __init__(self, path: Location, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def loads(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value of `text`, or `JsonRefused` saying where and why it cannot be carried.

    The root is at depth 1: ``{"a": [1]}`` nests two levels deep.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise _parse_refusal(text, error, max_depth=max_depth) from None
    keys, plain = _survey(value, max_depth=max_depth)
    if plain and not _may_repeat_a_key(text, keys):
        return value
    # Slowly now, to say where: the depth and the integers orjson read, then (the depth being
    # bounded, the recursive standard parser is safe) what orjson dropped: integers as
    # written, and every key, with a mark on repeated ones.
    refusal = _refusal(value, max_depth=max_depth) or _refusal(
        _standard_reading(text), max_depth=max_depth
    )
    if refusal is not None:
        raise refusal
    return value


def _standard_reading(text: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_Members)
    except (ValueError, RecursionError) as error:  # where the two parsers would disagree
        raise JsonRefused((), f"is not valid JSON: {error}") from None


def _survey(value: object, *, max_depth: int) -> tuple[int, bool]:
    """How many keys the objects of `value` hold, and whether it is plainly fine: within the
    depth, no integer beyond 64 bits, no float as large as one. A walk without recursion or
    paths, as ingestion makes one per event."""
    keys = 0
    plain = _plain_number(value)
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack and plain:
        node, depth = stack.pop()
        if type(node) is dict:
            keys += len(node)
            items: Any = node.values()
        elif type(node) is list:
            items = node
        else:
            continue
        plain = depth <= max_depth
        for item in items:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif (kind is int or kind is float) and not _plain_number(item):
                plain = False
    return keys, plain


def _plain_number(value: object) -> bool:
    if type(value) is int:
        return _INT64_MIN <= value <= _INT64_MAX
    if type(value) is float:
        return -_INT64_MAGNITUDE < value < _INT64_MAGNITUDE
    return True


def _may_repeat_a_key(text: str, keys: int) -> bool:
    """Whether `text` may hold more keys than orjson kept (it keeps the last of repeated
    ones). Each key is followed by one colon; other colons are inside strings."""
    if text.count(":") == keys:
        return False
    if _SPACED_KEY_END.search(text):
        return True
    # Every key ends with `":` now; inside a string `":` is escaped `\":`, counted too.
    return text.count('":') != keys


def _refusal(value: object, *, max_depth: int) -> JsonRefused | None:
    """What in `value` breaks the depth, the integer range or the unique keys, and where."""
    if type(value) is int and not _plain_number(value):
        return _beyond_64_bits(value, ())
    stack: list[tuple[object, Location]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Members) and node.repeated is not None:
            return JsonRefused(path, f"holds the key {node.repeated!r} more than once")
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        if len(path) >= max_depth:
            return _too_deep(path, max_depth)
        for step, item in items:
            if type(item) is int and not _plain_number(item):
                return _beyond_64_bits(item, (*path, step))
            if isinstance(item, dict | list):
                stack.append((item, (*path, step)))
    return None


def _beyond_64_bits(value: int, path: Location) -> JsonRefused:
    literal = str(value)
    shown = literal if len(literal) <= 40 else f"{literal[:40]}..."
    return JsonRefused(path, f"the integer {shown} does not fit in 64 bits")


def _parse_refusal(text: str, error: orjson.JSONDecodeError, *, max_depth: int) -> JsonRefused:
    """Why orjson refused `text`, at the value to blame where the standard parser finds it."""
    if _nests_deeper(text, max_depth):  # orjson stops only at its own, larger, depth
        return _too_deep((), max_depth)
    try:
        value = json.loads(text)  # reads 1e999, NaN and lone surrogates, which orjson refuses
    except (ValueError, RecursionError):
        value = None
    return _unfaithful(value) or JsonRefused((), f"is not valid JSON: {error}")


def _unfaithful(value: object) -> JsonRefused | None:
    """The first number or string in `value` that JSON cannot carry unchanged, if any."""
    stack: list[tuple[object, Location]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return JsonRefused(path, "is not a number a double can hold (NaN, infinite, 1e999)")
        if isinstance(node, str) and not _is_unicode(node):
            return JsonRefused(path, _LONE_SURROGATE)
        if isinstance(node, dict):
            if not all(_is_unicode(key) for key in node):  # the key itself cannot be named
                return JsonRefused(path, f"has a key that {_LONE_SURROGATE}")
            stack.extend(((item, (*path, key)) for key, item in node.items()))
        elif isinstance(node, list):
            stack.extend(((item, (*path, index)) for index, item in enumerate(node)))
    return None


_LONE_SURROGATE = "holds a lone surrogate, which is not Unicode text"


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _too_deep(path: Location, max_depth: int) -> JsonRefused:
    # Named by its outermost member: the full path of the culprit would be as deep as it is.
    return JsonRefused(path[:1], f"nests arrays and objects more than {max_depth} levels deep")


def _nests_deeper(text: str, max_depth: int) -> bool:
    depth = 0
    for token in _NESTING_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > max_depth:
                return True
        elif bracket in ("]", "}"):
            depth -= 1
    return False


class _Members(dict[str, Any]):
    """An object as the standard parser read it, remembering a key it saw twice."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated = None if len(self) == len(pairs) else _first_repeated(pairs)


def _first_repeated(pairs: list[tuple[str, Any]]) -> str | None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None
