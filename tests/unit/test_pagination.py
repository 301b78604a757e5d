"""Page tokens of ListSubscriptions: opaque, tied to their filters, refused when not ours."""

from __future__ import annotations

import base64
import json
import re
import string
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service_common.errors import FieldViolation, InvalidArgument
from service_common.page_tokens import MAX_TOKEN_LENGTH
from subscription_service.domain import ListQuery
from subscription_service.pagination import decode_page_token, encode_page_token
from subscription_service.store import Cursor

QUERY = ListQuery(tenant="acme", page_size=3, message_type="event.claim.created.v1", enabled=True)
ID = "sub_0a1b2c3d4e5f60718293a4b5c6d7e8f9"  # the shape SubscriptionStore.create gives
OTHER_ID = "sub_" + "f" * 32
CURSOR = Cursor(create_time=datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC), id=ID)


def refusal(token: str, query: ListQuery = QUERY) -> str:
    """Why `token` is refused; fails unless it is an InvalidArgument on `page_token` alone."""
    with pytest.raises(InvalidArgument) as refused:
        decode_page_token(token, query)
    [violation] = refused.value.violations
    assert violation.field == "page_token"
    return violation.description


def token_of(data: object) -> str:
    return text_token(json.dumps(data))


def text_token(text: str) -> str:
    """A token holding `text` as it is: for JSON that json.dumps would not write."""
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def issued_fields() -> dict[str, object]:
    """The fields of a token the service issued for CURSOR and QUERY, to forge from."""
    issued = json.loads(base64.urlsafe_b64decode(encode_page_token(CURSOR, QUERY) + "=="))
    assert isinstance(issued, dict)
    return issued


def forged(**fields: object) -> str:
    """A token issued for CURSOR and QUERY, with some fields replaced: the fingerprint still
    matches, so only what was replaced can be the reason for a refusal."""
    return token_of({**issued_fields(), **fields})


@pytest.mark.parametrize(
    "cursor",
    [
        CURSOR,
        Cursor(create_time=datetime(2025, 3, 1, 12, 30, 45, tzinfo=UTC), id=OTHER_ID),
        Cursor(create_time=datetime(1, 1, 1, tzinfo=UTC), id="sub_" + "0" * 32),
        Cursor(create_time=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), id=OTHER_ID),
    ],
    ids=["utc with microseconds", "whole seconds", "first moment", "last moment"],
)
def test_a_token_decodes_to_the_cursor_it_was_made_from(cursor: Cursor) -> None:
    decoded = decode_page_token(encode_page_token(cursor, QUERY), QUERY)
    assert decoded == cursor
    assert decoded is not None
    assert decoded.create_time.tzinfo is UTC


def test_a_time_in_another_offset_comes_back_as_the_same_moment_in_utc() -> None:
    # SQLite compares the stored UTC wall time and ignores offsets: a cursor must be in UTC.
    elsewhere = datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5)))
    decoded = decode_page_token(encode_page_token(Cursor(elsewhere, ID), QUERY), QUERY)
    assert decoded is not None
    assert decoded == Cursor(datetime(2025, 1, 1, 4, 59, 59, 999999, tzinfo=UTC), ID)
    assert decoded.create_time.tzinfo is UTC


def test_a_naive_time_is_never_put_in_a_token() -> None:
    # The decoder refuses naive times, so the encoder must not write one it would refuse.
    with pytest.raises(ValueError, match="timezone-aware"):
        encode_page_token(Cursor(datetime(2025, 3, 1, 12, 30, 45), ID), QUERY)


def test_tokens_are_url_safe_text_without_padding() -> None:
    for id_ in ("sub_a", "sub_ab", "sub_abc"):
        token = encode_page_token(replace(CURSOR, id=id_), QUERY)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token), token


def test_an_empty_token_means_the_first_page() -> None:
    assert decode_page_token("", QUERY) is None


def test_the_page_size_may_change_between_pages() -> None:
    token = encode_page_token(CURSOR, QUERY)
    assert decode_page_token(token, replace(QUERY, page_size=500)) == CURSOR


@pytest.mark.parametrize(
    "other",
    [
        replace(QUERY, tenant="globex"),
        replace(QUERY, tenant=None),
        replace(QUERY, message_type="event.claim.*"),
        replace(QUERY, message_type=None),
        replace(QUERY, enabled=False),
        replace(QUERY, enabled=None),
    ],
    ids=["other tenant", "every tenant", "other type", "no type", "disabled", "any state"],
)
def test_a_token_is_refused_with_other_filters(other: ListQuery) -> None:
    token = encode_page_token(CURSOR, QUERY)
    assert refusal(token, other) == "was issued for other filters; start from the first page"


NOT_OURS = "is not a token this service issued"
GARBAGE = {
    "punctuation": "not-a-token!",
    "one character": "a",
    "padding only": "====",
    "base64 of text": base64.urlsafe_b64encode(b"hello, world").decode(),
    "base64 of a list": token_of([1, 2, 3]),
    "base64 of a string": token_of("t"),
    "base64 of null": token_of(None),
    "missing time": token_of({"i": "sub_1", "f": "0" * 16}),
    "missing id": token_of({"t": CURSOR.create_time.isoformat(), "f": "0" * 16}),
    "missing fingerprint": token_of({"t": CURSOR.create_time.isoformat(), "i": "sub_1"}),
    "time not a string": token_of({"t": 1700000000, "i": "sub_1", "f": "0" * 16}),
    "time not a time": token_of({"t": "yesterday", "i": "sub_1", "f": "0" * 16}),
    "binary": base64.urlsafe_b64encode(bytes(range(256))).decode(),
    "non-ascii": "ééé",
}


@pytest.mark.parametrize("token", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_tokens_are_invalid_arguments_on_page_token(token: str) -> None:
    assert refusal(token) == NOT_OURS


def test_a_forged_token_with_another_fingerprint_is_refused() -> None:
    forged = token_of({**issued_fields(), "f": "0" * 16})
    refusal(forged)
    # The same token, untouched, is accepted: the refusal is about the fingerprint.
    assert decode_page_token(token_of(issued_fields()), QUERY) == CURSOR


def test_every_truncation_of_a_token_is_refused() -> None:
    token = encode_page_token(CURSOR, QUERY)
    for length in range(1, len(token)):
        refusal(token[:length])


def test_the_refusal_is_an_invalid_argument_naming_only_the_page_token() -> None:
    with pytest.raises(InvalidArgument) as refused:
        decode_page_token("garbage!", QUERY)
    assert refused.value.violations == (FieldViolation("page_token", NOT_OURS),)


# --- forged tokens ---------------------------------------------------------------------------
# Tokens are not signed: anyone can write one with a fingerprint that matches. Each forgery
# below reached the database before page tokens were checked strictly.


def test_a_token_with_only_its_fields_replaced_by_the_same_values_is_accepted() -> None:
    # The control for the forgeries below: forging itself changes nothing.
    assert decode_page_token(forged(), QUERY) == CURSOR


def test_a_lone_surrogate_in_the_id_is_refused() -> None:
    # SQLite could not encode it and answered INTERNAL.
    text = json.dumps(issued_fields()).replace(ID, ID[:-1] + "\\ud800")
    assert "\\ud800" in text
    assert refusal(text_token(text)) == NOT_OURS


def test_a_nul_in_the_id_is_refused() -> None:
    # PostgreSQL refuses NUL in text and answered INTERNAL.
    assert refusal(forged(i=ID[:-1] + "\x00")) == NOT_OURS


ODD_IDS = {
    "empty": "",
    "prefix only": "sub_",
    "one digit short": ID[:-1],
    "one digit long": ID + "0",
    "upper-case hex": ID.upper().replace("SUB_", "sub_"),
    "not hex": "sub_" + "g" * 32,
    "another kind of id": "dlv_" + ID.removeprefix("sub_"),
    "trailing newline": ID + "\n",
    "trailing space": ID + " ",
    "other scripts' digits": "sub_" + "\u0660" * 32,
    "sql": "sub_' OR 1=1 --",
    "lone surrogate": ID[:-1] + "\udfff",
    "control character": ID[:-1] + "\x1b",
}


@pytest.mark.parametrize("id_", ODD_IDS.values(), ids=ODD_IDS.keys())
def test_an_id_of_another_shape_than_the_service_gives_is_refused(id_: str) -> None:
    assert refusal(forged(i=id_)) == NOT_OURS


ODD_TIMES = {
    "naive": "2025-03-01T12:30:45.123456",
    "date only": "2025-03-01",
    "zulu": "2025-03-01T12:30:45Z",
    "space for T": "2025-03-01 12:30:45+00:00",
    "milliseconds": "2025-03-01T12:30:45.123+00:00",
    "offset with seconds": "2025-03-01T12:30:45+00:00:30",
    "compact": "20250301T123045+0000",
    "week date": "2025-W09-6T12:30:45+00:00",
    "month 13": "2025-13-01T12:30:45+00:00",
    "February 30": "2025-02-30T12:30:45+00:00",
    "hour 24": "2025-03-01T24:00:00+00:00",
    "offset of a day": "2025-03-01T12:30:45+24:00",
    "year 0": "0000-01-01T00:00:00+00:00",
    "before year 1 in UTC": "0001-01-01T00:00:00+14:00",
    "after year 9999 in UTC": "9999-12-31T23:59:59.999999-23:59",
    "other scripts' digits": "\u0662\u0660\u0662\u0665-03-01T12:30:45+00:00",
    "leading space": " 2025-03-01T12:30:45+00:00",
    "nul": "2025-03-01T12:30:45+00:00\x00",
    "lone surrogate": "2025-03-01T12:30:45+00:00\ud800",
    "empty": "",
}


@pytest.mark.parametrize("moment", ODD_TIMES.values(), ids=ODD_TIMES.keys())
def test_a_time_the_encoder_would_not_write_or_utc_cannot_hold_is_refused(moment: str) -> None:
    assert refusal(forged(t=moment)) == NOT_OURS


WRONG_TYPES: list[object] = [None, 0, 1.5, True, [], {}, ["sub_"], {"i": ID}]


@pytest.mark.parametrize("key", ["t", "i", "f"])
@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_a_field_that_is_not_a_string_is_refused(key: str, value: object) -> None:
    assert refusal(forged(**{key: value})) == NOT_OURS


@pytest.mark.parametrize("key", ["t", "i", "f"])
def test_a_token_without_one_of_its_fields_is_refused(key: str) -> None:
    fields = issued_fields()
    del fields[key]
    assert refusal(token_of(fields)) == NOT_OURS


@pytest.mark.parametrize("extra", [{"x": "1"}, {"tenant": "globex"}, {"": ""}, {"T": "t"}])
def test_a_token_with_a_field_the_encoder_does_not_write_is_refused(
    extra: dict[str, str],
) -> None:
    assert refusal(forged(**extra)) == NOT_OURS


def test_a_token_with_a_field_written_twice_is_refused() -> None:
    # JSON readers disagree on which one counts; a token of ours never has two.
    text = json.dumps(issued_fields())
    assert refusal(text_token(text[:-1] + f', "i": "{OTHER_ID}"}}')) == NOT_OURS


@pytest.mark.parametrize("fingerprint", ["", "0" * 15, "0" * 17, "A" * 16, "\x00" * 16])
def test_a_fingerprint_of_another_shape_is_refused_as_not_ours(fingerprint: str) -> None:
    assert refusal(forged(f=fingerprint)) == NOT_OURS


def test_a_token_longer_than_the_bound_is_refused_whatever_it_holds() -> None:
    # JSON that would be accepted but for the spaces that make it too long.
    text = json.dumps(issued_fields(), indent=MAX_TOKEN_LENGTH)
    assert len(text_token(text)) > MAX_TOKEN_LENGTH
    assert refusal(text_token(text)) == NOT_OURS
    assert decode_page_token(text_token(json.dumps(issued_fields(), indent=2)), QUERY) == CURSOR


def test_a_huge_token_is_refused() -> None:
    assert refusal("A" * 1_000_000) == NOT_OURS


@pytest.mark.parametrize("depth", [10, 100, 100_000])
def test_deeply_nested_json_is_refused_without_a_recursion_error(depth: int) -> None:
    assert refusal(text_token("[" * depth + "]" * depth)) == NOT_OURS
    assert refusal(text_token('{"t":' * depth + "1" + "}" * depth)) == NOT_OURS


def test_nesting_as_deep_as_the_bound_allows_is_refused() -> None:
    # The bound, not the recursion limit, is what keeps the JSON reader shallow.
    depth = MAX_TOKEN_LENGTH * 3 // 4 // 2
    token = text_token("[" * depth + "]" * depth)
    assert len(token) <= MAX_TOKEN_LENGTH
    assert depth < sys.getrecursionlimit() // 4
    assert refusal(token) == NOT_OURS


NOT_BASE64URL = {
    "standard alphabet": base64.b64encode(b'{"t":">>>???"}').decode(),
    "padded": encode_page_token(CURSOR, QUERY) + "=" * 2,
    "inner padding": encode_page_token(CURSOR, QUERY)[:8] + "==" + encode_page_token(CURSOR, QUERY),
    "whitespace": encode_page_token(CURSOR, QUERY)[:8] + " " + encode_page_token(CURSOR, QUERY)[8:],
    "newline at the end": encode_page_token(CURSOR, QUERY) + "\n",
    "nul": encode_page_token(CURSOR, QUERY) + "\x00",
    "lone surrogate": encode_page_token(CURSOR, QUERY) + "\ud800",
    "full-width letters": "\uff21" * 8,
    "one character too many": encode_page_token(CURSOR, QUERY) + "A",
}


@pytest.mark.parametrize("token", NOT_BASE64URL.values(), ids=NOT_BASE64URL.keys())
def test_text_that_is_not_unpadded_base64url_is_refused(token: str) -> None:
    assert refusal(token) == NOT_OURS


def test_a_token_with_other_bits_in_its_last_character_is_refused() -> None:
    # base64 readers ignore the bits past the last byte; only the encoder's spelling counts.
    token = encode_page_token(CURSOR, QUERY)
    assert len(token) % 4 in (2, 3), "the last character must carry unused bits"
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    twin = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(token + "==")
    assert refusal(twin) == NOT_OURS


NOT_ASCII_JSON = {
    "latin-1 byte": b'{"t":"\xe9"}',
    "utf-8 letter": '{"t":"é"}'.encode(),
    "utf-16": json.dumps({"t": "x"}).encode("utf-16"),
    "byte order mark": b"\xef\xbb\xbf" + json.dumps({"t": "x"}).encode(),
    "nan": b'{"t":NaN,"i":NaN,"f":NaN}',
    "huge number": b'{"t":' + b"9" * 300 + b"}",
}


@pytest.mark.parametrize("raw", NOT_ASCII_JSON.values(), ids=NOT_ASCII_JSON.keys())
def test_bytes_that_are_not_ascii_json_of_a_token_are_refused(raw: bytes) -> None:
    assert refusal(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == NOT_OURS


def test_a_valid_forgery_is_still_refused_for_other_filters() -> None:
    # Checking the shape does not change what a token issued for other filters answers.
    token = forged(t="2020-01-01T00:00:00+00:00", i=OTHER_ID)
    other = replace(QUERY, tenant="globex")
    assert refusal(token, other) == "was issued for other filters; start from the first page"
