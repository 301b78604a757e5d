"""The wire format's JSON: read without recursion, refused (saying where) rather than changed."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook_wire.strict_json import MAX_DEPTH, JsonRefused, loads

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def refusal(text: str, *, max_depth: int = MAX_DEPTH) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(JsonRefused) as raised:
        loads(text, max_depth=max_depth)
    return raised.value.path, raised.value.reason


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ('{"a": 1e999}', ("a",), "double"),
        ('{"a": [1, -1e999]}', ("a", 1), "double"),
        ('{"a": {"b": 1E400}}', ("a", "b"), "double"),
        ('{"a": NaN}', ("a",), "double"),
        ('{"a": -Infinity}', ("a",), "double"),
        ('{"a": 9223372036854775808}', ("a",), "64 bits"),
        ('{"a": -9223372036854775809}', ("a",), "64 bits"),
        ('{"a": [0, 18446744073709551616]}', ("a", 1), "64 bits"),
        ('{"a": 123456789012345678901234567890}', ("a",), "64 bits"),
        ("99999999999999999999", (), "64 bits"),
        ('{"a": 1, "b": {"c": 2, "c": 3}}', ("b",), "'c' more than once"),
        ('{"a" : 1, "a" : 2}', (), "'a' more than once"),
        ('{"a":\n1, "a":2}', (), "'a' more than once"),
        ('{"at": "10:00:00", "a": 1, "a": 2}', (), "'a' more than once"),
        ('{"a": "\\":", "a": 2}', (), "'a' more than once"),
        ('{"a": "\\ud800"}', ("a",), "lone surrogate"),
        ('{"a": ["\\udc00x"]}', ("a", 0), "lone surrogate"),
        ('{"\\ud800": 1}', (), "a key that holds a lone surrogate"),
        ('{"a": 1,}', (), "not valid JSON"),
        ("", (), "not valid JSON"),
    ],
)
def test_what_json_cannot_carry_unchanged_is_refused_where_it_is(
    text: str, path: tuple[str | int, ...], reason: str
) -> None:
    found_path, found_reason = refusal(text)
    assert found_path == path
    assert reason in found_reason


def test_the_integer_bounds_are_those_of_a_signed_64_bit_integer() -> None:
    assert loads(f"[{INT64_MIN}, {INT64_MAX}]") == [INT64_MIN, INT64_MAX]
    assert isinstance(loads(f"{INT64_MAX}"), int)


def test_large_floats_that_are_no_integers_pass_unchanged() -> None:
    # As large as an integer beyond 64 bits: they take the slow path and still pass.
    assert loads('{"a": 1e19, "b": [-1.5e300]}') == {"a": 1e19, "b": [-1.5e300]}


def test_keys_whose_text_looks_like_another_key_end_are_not_taken_for_repeats() -> None:
    assert loads('{"a": "x\\":y", "b": "\\" : "}') == {"a": 'x":y', "b": '" : '}
    assert loads('{"at": "2026-01-02T03:04:05Z", "b" : 1}') == {
        "at": "2026-01-02T03:04:05Z",
        "b": 1,
    }


def test_nesting_up_to_the_bound_passes_and_one_level_more_is_refused() -> None:
    assert loads("[" * 5 + "]" * 5, max_depth=5) == [[[[[]]]]]
    assert refusal('{"a": [[[[]]]]}', max_depth=4) == (
        ("a",),
        "nests arrays and objects more than 4 levels deep",
    )


@pytest.mark.parametrize("depth", [990, 1100, 100_000])
def test_nesting_of_any_depth_is_refused_without_recursion(depth: int) -> None:
    text = '{"x":' + "[" * depth + "1234567890123456789" + "]" * depth + "}"
    path, reason = refusal(text, max_depth=32)
    assert "more than 32 levels deep" in reason
    assert path in {(), ("x",)}


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = '{"a": "' + "[" * 10_000 + '\\"{"}'
    assert loads(text, max_depth=2) == {"a": "[" * 10_000 + '"{'}


def test_a_nul_escape_is_json_and_passes() -> None:
    assert loads('{"a": "x\\u0000"}') == {"a": "x\x00"}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(json_values)
def test_every_value_json_carries_reads_back_equal_and_of_the_same_types(value: object) -> None:
    read = loads(json.dumps(value, ensure_ascii=False))
    assert _typed(read) == _typed(value)


@given(json_values, st.sampled_from([" ", "\n", "\t", ""]))
def test_a_repeated_key_is_refused_however_the_text_is_spaced(value: object, space: str) -> None:
    member = json.dumps(value)
    text = f'{{"k"{space}:{space}{member},{space}"k"{space}:{space}{member}}}'
    assert refusal(text) == ((), "holds the key 'k' more than once")


def _typed(value: object) -> object:
    """`value` with each number tagged by its type, so that 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return (type(value).__name__, value)
