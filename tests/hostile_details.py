"""Details texts for the publish routes' property tests, and the rules they must meet, read
independently of the dispatcher's parser.

`judge` says, from Python's `json` alone, whether a details text must be accepted, must be
refused, or may go either way on a route, and what receivers must then get; the strategies
write JSON values of every kind and hostile text that Python's json cannot write (numbers
that overflow a double, repeated keys, lone surrogate escapes, nesting past every parser's
limit, broken JSON, details past 64 KiB).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from dispatcher_service.ingest import MAX_DETAILS_BYTES, MAX_DETAILS_DEPTH

# Its contract requires only the messageType and leaves every other detail field open, but
# for the common identifiers, which must be strings.
NOTE = "event.note.created.v1"
IDENTIFIERS = frozenset({"accountReference", "claimRef", "receeveClaimRef", "externalDebtorRef"})
RESERVED_KEYS = IDENTIFIERS | {"messageType"}
TYPE_MEMBER = f'"messageType":"{NOTE}"'
GOOD_DETAILS: dict[str, Any] = {"messageType": NOTE, "good": True}
# Every event carries this timestamp, so that the whole delivered payload is known.
TIMESTAMP = "2021-10-14T15:33:16.848Z"

# Within this distance of MAX_DETAILS_BYTES, HTTP may count the details as sent or as it
# re-writes them; beyond it, the answer is certain.
SIZE_MARGIN = 2048

# The issue's own example: a RecursionError that ended a PublishEvents stream (UNKNOWN) and
# answered PublishEvent with INTERNAL.
ISSUE_EXAMPLE = '{"x":' + "[" * 990 + "1234567890123456789" + "]" * 990 + "}"


def typed(*members: str) -> str:
    """A details text of these member texts, after the messageType."""
    return "{" + ",".join([TYPE_MEMBER, *members]) + "}"


def nested_arrays(levels: int) -> str:
    return "[" * levels + "]" * levels


def sized(size: int) -> str:
    """Details of exactly `size` bytes: the messageType and one long string."""
    padding = size - len(typed('"big":""'))
    return typed(f'"big":"{"x" * padding}"')


# The largest details text, and one byte more.
BYTE_EXACT_SIZES = (MAX_DETAILS_BYTES, MAX_DETAILS_BYTES + 1)


# --- the rules, read independently of the dispatcher ----------------------------------


class Verdict(enum.Enum):
    ACCEPT = "must be accepted"
    REFUSE = "must be refused"
    EITHER = "may be accepted or refused"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    why: str
    # The details receivers must get, when the text may be accepted.
    details: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class RouteRules:
    """Where the routes differ, by design."""

    # Details must carry their messageType (HTTP); gRPC adds it when it is missing.
    requires_type: bool
    # The size limit applies to the text as sent (gRPC: `details` is that string); HTTP
    # re-writes the details it read, so only sizes well clear of the limit are certain.
    sized_as_sent: bool
    # A refusal may name the body (HTTP: broken details break the body's JSON).
    may_name_body: bool


GRPC_RULES = RouteRules(requires_type=False, sized_as_sent=True, may_name_body=False)
HTTP_RULES = RouteRules(requires_type=True, sized_as_sent=False, may_name_body=True)


class _Unfaithful(Exception):
    """A value JSON cannot carry unchanged, found while reading the reference way."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for key, value in pairs:
        if key in members:
            raise _Unfaithful(f"holds the key {key!r} twice")
        members[key] = value
    return members


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise _Unfaithful(f"{literal[:40]} overflows a double")
    return number


def _int64(literal: str) -> int:
    # Compared as text first: int() refuses more than 4300 digits with an error of its own.
    digits = literal.lstrip("-")
    if len(digits) > 19 or not -(2**63) <= int(literal) < 2**63:
        raise _Unfaithful(f"the integer {literal[:40]} is beyond 64 bits")
    return int(literal)


def _constant(name: str) -> object:
    raise _Unfaithful(f"{name} is not a JSON number")


# Strings (with their escapes) and brackets: nesting measured without a parser.
_NESTING_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _text_nesting(text: str) -> int:
    depth = deepest = 0
    for token in _NESTING_TOKENS.finditer(text):
        if token.group() in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token.group() in ("]", "}"):
            depth -= 1
    return deepest


def _depth(value: object) -> int:
    """Levels of arrays and objects; `{"a": [1]}` is two deep."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _strings(value: object) -> list[str]:
    """Every string of `value`, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value, *(s for item in value.values() for s in _strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def judge(text: str, rules: RouteRules) -> Judgement:
    """What the rules say of `text` as the details of an event published by a route."""
    if _text_nesting(text) > 2 * MAX_DETAILS_DEPTH:  # no need to parse it, nor safe
        return Judgement(Verdict.REFUSE, "nests far too deep, or is no JSON")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_members,
            parse_constant=_constant,
            parse_float=_finite,
            parse_int=_int64,
        )
    except _Unfaithful as unfaithful:
        return Judgement(Verdict.REFUSE, str(unfaithful))
    except ValueError as error:
        return Judgement(Verdict.REFUSE, f"is not JSON: {error}")
    if not isinstance(value, dict):
        return Judgement(Verdict.REFUSE, "is no JSON object")
    if (depth := _depth(value)) > MAX_DETAILS_DEPTH:
        return Judgement(Verdict.REFUSE, f"nests {depth} levels deep")
    if any(0xD800 <= ord(c) <= 0xDFFF for s in _strings(value) for c in s):
        return Judgement(Verdict.REFUSE, "holds a lone surrogate")
    if "messageType" not in value:
        if rules.requires_type:
            return Judgement(Verdict.REFUSE, "has no messageType")
        value = {**value, "messageType": NOTE}  # what ingestion adds
    if value["messageType"] != NOTE:
        return Judgement(Verdict.REFUSE, "has another messageType")
    if any(not isinstance(value[name], str) for name in IDENTIFIERS & value.keys()):
        return Judgement(Verdict.REFUSE, "has an identifier that is no string")
    sent = len(text.encode())
    if rules.sized_as_sent:
        sizes = (sent, sent)
        margin = 0
    else:
        sizes = (sent, len(_compact(value).encode()))
        margin = SIZE_MARGIN
    if min(sizes) > MAX_DETAILS_BYTES + margin:
        return Judgement(Verdict.REFUSE, f"is larger than {MAX_DETAILS_BYTES} bytes")
    doubts = []
    if max(sizes) > MAX_DETAILS_BYTES - margin:
        doubts.append(f"is {sizes[0]} bytes as sent and {sizes[1]} compact")
    if any("\x00" in s for s in _strings(value)):
        doubts.append("holds a NUL character")
    if doubts:
        return Judgement(Verdict.EITHER, "; ".join(doubts), value)
    return Judgement(Verdict.ACCEPT, "is a JSON object the rules allow", value)


# Cases the rules decide alike on every route (with the messageType HTTP requires).
RULE_EXAMPLES: dict[str, tuple[str, Verdict]] = {
    "the issue's example": (ISSUE_EXAMPLE, Verdict.REFUSE),
    "1e999": (typed('"amount":1e999'), Verdict.REFUSE),
    "-1e999": (typed('"amount":-1e999'), Verdict.REFUSE),
    "1E400 in an array": (typed('"amounts":[1,1E400]'), Verdict.REFUSE),
    "the largest double": (typed('"amount":1.7976931348623157e308'), Verdict.ACCEPT),
    "a double that underflows to 0": (typed('"amount":1e-400'), Verdict.ACCEPT),
    "NaN": (typed('"amount":NaN'), Verdict.REFUSE),
    "the 64-bit integers at both ends": (
        typed('"max":9223372036854775807', '"min":-9223372036854775808'),
        Verdict.ACCEPT,
    ),
    "2**63": (typed('"n":9223372036854775808'), Verdict.REFUSE),
    "-2**63 - 1": (typed('"n":-9223372036854775809'), Verdict.REFUSE),
    "2**64": (typed('"n":[18446744073709551616]'), Verdict.REFUSE),
    "2**53 + 1": (typed('"n":9007199254740993'), Verdict.ACCEPT),
    "a key twice": (typed('"k":1', '"k":1'), Verdict.REFUSE),
    "a key twice, once escaped": (typed('"a":{"k":1,"\\u006b":2}'), Verdict.REFUSE),
    "a lone high surrogate": (typed('"s":"\\ud800"'), Verdict.REFUSE),
    "a lone low surrogate as a key": (typed('"\\udfff":1'), Verdict.REFUSE),
    "a surrogate pair": (typed('"s":"\\ud83d\\ude00"'), Verdict.ACCEPT),
    "an escaped NUL": (typed('"s":"a\\u0000b"'), Verdict.EITHER),
    "a raw NUL": (typed('"s":"a\x00b"'), Verdict.REFUSE),
    f"{MAX_DETAILS_DEPTH} levels": (
        typed(f'"d":{nested_arrays(MAX_DETAILS_DEPTH - 1)}'),
        Verdict.ACCEPT,
    ),
    f"{MAX_DETAILS_DEPTH + 1} levels": (
        typed(f'"d":{nested_arrays(MAX_DETAILS_DEPTH)}'),
        Verdict.REFUSE,
    ),
    "an array": (f"[{{{TYPE_MEMBER}}}]", Verdict.REFUSE),
    "past 64 KiB": (
        typed(f'"big":"{"x" * (MAX_DETAILS_BYTES + 4 * SIZE_MARGIN)}"'),
        Verdict.REFUSE,
    ),
}


# --- generated details ----------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Case:
    """A details text, and what kind of case it is (for reports)."""

    kind: str
    text: str

    def __repr__(self) -> str:
        return f"Case({self.kind!r}, {shown(self.text)})"


def shown(text: str, limit: int = 300) -> str:
    if len(text) <= limit:
        return repr(text)
    return f"{text[: limit - 60]!r} ... {text[-40:]!r} ({len(text)} characters)"


SPECIAL_STRINGS = (
    "",
    "\x00",
    "a\x00b",
    "\x1f\x7f",
    "\u2028\u2029",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "😀",
    "é",
    "\\",
    '"',
    "</script>",
    "12345678901234567890123",
)
INTEGER_EDGES = (
    0,
    -1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    10**19,
    -(10**19),
    10**30,
)
FLOAT_EDGES = (
    0.0,
    -0.0,
    0.1,
    1.0,
    1e16,
    1e-7,
    2.0**53,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
)


def strings() -> st.SearchStrategy[str]:
    return st.text(max_size=16) | st.sampled_from(SPECIAL_STRINGS)


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-1000, 1000),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(-(2**70), 2**70),
        st.sampled_from(INTEGER_EDGES),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(FLOAT_EDGES),
        strings(),
    )


def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(strings(), children, max_size=4)
        ),
        max_leaves=20,
    )


def top_keys() -> st.SearchStrategy[str]:
    return strings().filter(lambda key: key not in RESERVED_KEYS)


def plain_texts() -> st.SearchStrategy[str]:
    return json_values().map(json.dumps)


ENCODINGS: dict[str, Callable[[object], str]] = {
    "json": json.dumps,
    "unicode-indented": lambda value: json.dumps(value, ensure_ascii=False, indent=2),
    "compact-sorted": lambda value: json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True
    ),
}
SEPARATORS = (",", ", ", ",\n  ")


def _nested(levels: int, arrays: Sequence[bool]) -> object:
    value: object = 1
    for array in arrays[:levels]:
        value = [value] if array else {"n": value}
    return value


@st.composite
def generated(draw: st.DrawFn, *, with_type: bool, nested: bool = False) -> Case:
    """Details as Python's json writes them: every value it can write; `nested`, with a
    member nesting the details about as deep as they may go, or a little deeper."""
    details = draw(st.dictionaries(top_keys(), json_values(), max_size=5))
    kind = "generated"
    if nested:
        edge = range(MAX_DETAILS_DEPTH - 2, MAX_DETAILS_DEPTH + 3)
        depth = draw(st.sampled_from(edge) | st.integers(2, 2 * MAX_DETAILS_DEPTH))
        arrays = draw(st.lists(st.booleans(), min_size=depth - 1, max_size=depth - 1))
        details["nested"] = _nested(depth - 1, arrays)
        kind = "nested"
    if with_type or draw(st.booleans()):
        details = {"messageType": NOTE, **details}
    return Case(kind, ENCODINGS[draw(st.sampled_from(sorted(ENCODINGS)))](details))


NUMBER_LITERALS = (
    "1e999",
    "-1e999",
    "1E400",
    "1e309",
    "-1E+400",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "-1.7976931348623157E308",
    "5e-324",
    "1e-400",
    "-0",
    "-0.0",
    "0e0",
    "1E2",
    "1.0",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1234567890123456789",
    "12345678901234567890",
    "1" + "0" * 400 + ".0",
    "0." + "1" * 400,
)


@st.composite
def number_literals(draw: st.DrawFn) -> str:
    """Numbers as JSON text: overflowing, underflowing, long, with every exponent form."""
    if draw(st.booleans()):
        return draw(st.sampled_from(NUMBER_LITERALS))
    if draw(st.integers(0, 3)) == 0:
        return "1" + "0" * draw(st.integers(17, 400))
    text = draw(st.sampled_from(["", "-"])) + str(draw(st.integers(0, 10**30)))
    if (fraction := draw(st.none() | st.integers(0, 10**20))) is not None:
        text += f".{fraction}"
    if (exponent := draw(st.none() | st.integers(-1100, 1100))) is not None:
        plus = "+" if exponent >= 0 and draw(st.booleans()) else ""
        text += draw(st.sampled_from("eE")) + plus + str(exponent)
    return text


# JSON string literals: lone surrogates in every position, pairs, escapes, NUL (escaped and
# raw), raw control characters, and strings that are not JSON.
HOSTILE_STRINGS = (
    '"\\ud800"',
    '"\\udfff"',
    '"a\\udc00b"',
    '"\\ude00\\ud83d"',
    '"\\ud83d\\u0041"',
    '"\\ud83dx"',
    '"\\ud83d\\ude00"',
    '"\\uDBFF\\uDFFF"',
    '"\\u0000"',
    '"a\\u0000b"',
    '"\\u00e9\\/\\b\\f\\n\\r\\t"',
    '"\\uFFFF"',
    '"\\uFEFF"',
    '"a\x00b"',
    '"tab\there"',
    '"line\nbreak"',
    '"\x7f"',
    '"\\x41"',
    '"\\U0001F600"',
    "'single'",
    '"unterminated',
)
NOT_JSON_VALUES = (
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "undefined",
    "True",
    "None",
    "0x10",
    "+1",
    ".5",
    "1.",
    "01",
    "-",
    "1e",
    "--1",
    "1_000",
    "[1,]",
    "[,1]",
    "{,}",
    '{"a"}',
    '{"a":}',
    '{"a" 1}',
    "[1 2]",
    "/* c */1",
    "1 // c",
)
DEPTH_EDGES = (
    MAX_DETAILS_DEPTH - 3,
    MAX_DETAILS_DEPTH - 2,
    MAX_DETAILS_DEPTH - 1,
    MAX_DETAILS_DEPTH,
    63,
    64,
    65,
    255,
    256,
    990,
    1023,
    1024,
    1025,
)


@st.composite
def deep_values(draw: st.DrawFn) -> str:
    levels = draw(st.sampled_from(DEPTH_EDGES) | st.integers(1, 1200))
    leaf = draw(st.sampled_from(["1", "1234567890123456789", "[]", "{}", '"x"', "null", "1e999"]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"d":', "}")]))
    return opener * levels + leaf + closer * levels


def _escaped(key: str) -> str:
    """`key` as a JSON string of \\u escapes only (astral characters as surrogate pairs)."""
    units = key.encode("utf-16-be")
    return (
        '"' + "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)) + '"'
    )


def _spelled(key: str, escaped: bool) -> str:
    return _escaped(key) if escaped else json.dumps(key, ensure_ascii=False)


@st.composite
def repeated_members(draw: st.DrawFn, keys: st.SearchStrategy[str]) -> list[str]:
    """Two members of one key, each written plainly or in escapes, of equal or other values."""
    key = draw(keys)
    first = draw(plain_texts())
    second = first if draw(st.booleans()) else draw(plain_texts())
    return [
        f"{_spelled(key, draw(st.booleans()))}:{first}",
        f"{_spelled(key, draw(st.booleans()))}:{second}",
    ]


@st.composite
def objects_with_a_repeated_key(draw: st.DrawFn) -> str:
    others = draw(st.dictionaries(strings(), json_values(), max_size=2))
    members = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in others.items()]
    members += draw(repeated_members(strings()))
    return "{" + ",".join(draw(st.permutations(members))) + "}"


HOSTILE_KINDS = (
    "number",
    "string",
    "key",
    "not-json",
    "repeated-key",
    "repeated-member",
    "deep",
)


@st.composite
def hostile(draw: st.DrawFn, kind: str, *, with_type: bool) -> Case:
    """Details with one hostile member among plain ones; its value may be buried deeper."""
    if kind == "repeated-member":
        special = draw(repeated_members(top_keys()))
    else:
        key = json.dumps(draw(top_keys()))
        if kind == "number":
            value = draw(number_literals())
        elif kind == "string":
            value = draw(st.sampled_from(HOSTILE_STRINGS))
        elif kind == "key":
            key, value = draw(st.sampled_from(HOSTILE_STRINGS)), draw(plain_texts())
        elif kind == "not-json":
            value = draw(st.sampled_from(NOT_JSON_VALUES))
        elif kind == "repeated-key":
            value = draw(objects_with_a_repeated_key())
        else:
            value = draw(deep_values())
        for _ in range(draw(st.integers(0, 3))):
            value = f"[{value}]" if draw(st.booleans()) else f'{{"in":{value}}}'
        special = [f"{key}:{value}"]
    plain = draw(st.dictionaries(top_keys(), json_values(), max_size=3))
    members = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in plain.items()] + special
    if with_type or draw(st.booleans()):
        members.append(TYPE_MEMBER)
    separator = draw(st.sampled_from(SEPARATORS))
    return Case(kind, "{" + separator.join(draw(st.permutations(members))) + "}")


WHOLE_TEXTS = (
    "",
    " ",
    "null",
    "true",
    "0",
    "1e999",
    '"{}"',
    '"\\ud800"',
    "[]",
    f"[{{{TYPE_MEMBER}}}]",
    "{",
    "}",
    "{}",
    "{}}",
    "{}{}",
    "{} []",
    "{,}",
    f"{{{TYPE_MEMBER},}}",
    f"{{{TYPE_MEMBER}",
    "{'messageType':'event.note.created.v1'}",
    "{messageType:1}",
    "\x00",
    f"{{{TYPE_MEMBER}}}\x00",
    f" {{ {TYPE_MEMBER} }} ",
    f"\n\t{{{TYPE_MEMBER}}}\r\n",
    f"{{{TYPE_MEMBER}}}",
    "NaN",
    "Infinity",
)


@st.composite
def broken(draw: st.DrawFn, *, with_type: bool) -> Case:
    """A text that is no object or no JSON: as such, or a generated one broken."""
    if draw(st.booleans()):
        return Case("whole-text", draw(st.sampled_from(WHOLE_TEXTS)))
    text = draw(generated(with_type=with_type)).text
    how = draw(st.sampled_from(["truncated", "extra-brace", "trailing-comma", "single-quotes"]))
    if how == "truncated":
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif how == "extra-brace":
        text += "}"
    elif how == "trailing-comma":
        text = text[:-1] + ",}"
    else:
        text = text.replace('"', "'")
    return Case(f"broken/{how}", text)


LARGE_CHARACTERS = ("x", "é", "€", "😀")


@st.composite
def large(draw: st.DrawFn, *, with_type: bool) -> Case:
    """Details of one long string: well under, near or well past 64 KiB; raw or in escapes
    (as sent, six bytes for a three-byte character)."""
    if draw(st.booleans()):
        character = draw(st.sampled_from(LARGE_CHARACTERS))
        size = draw(st.integers(40_000, 100_000))
        string = json.dumps(character * (size // len(character.encode())), ensure_ascii=False)
    else:
        string = json.dumps("€" * draw(st.integers(10_000, 30_000)))  # \u20ac each
    members = [TYPE_MEMBER] if with_type or draw(st.booleans()) else []
    return Case("large", "{" + ",".join([*members, f'"big":{string}']) + "}")


def case_kinds(*, with_type: bool) -> dict[str, st.SearchStrategy[Case]]:
    """Each kind of case on its own: a derandomized `one_of` of 100 examples leaves some
    kinds out altogether."""
    return {
        "generated": generated(with_type=with_type),
        "nested": generated(with_type=with_type, nested=True),
        "broken": broken(with_type=with_type),
        "large": large(with_type=with_type),
        **{kind: hostile(kind, with_type=with_type) for kind in HOSTILE_KINDS},
    }
