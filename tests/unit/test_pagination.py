"""Page tokens of ListSubscriptions: opaque, tied to their filters, refused when not ours."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service_common.errors import FieldViolation, InvalidArgument
from subscription_service.domain import ListQuery
from subscription_service.pagination import decode_page_token, encode_page_token
from subscription_service.store import Cursor

QUERY = ListQuery(tenant="acme", page_size=3, message_type="event.claim.created.v1", enabled=True)
CURSOR = Cursor(create_time=datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC), id="sub_0a1b")


def refusal(token: str, query: ListQuery = QUERY) -> str:
    """Why `token` is refused; fails unless it is an InvalidArgument on `page_token` alone."""
    with pytest.raises(InvalidArgument) as refused:
        decode_page_token(token, query)
    [violation] = refused.value.violations
    assert violation.field == "page_token"
    return violation.description


def token_of(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        CURSOR,
        Cursor(create_time=datetime(2025, 3, 1, 12, 30, 45, tzinfo=UTC), id="sub_x"),
        Cursor(
            create_time=datetime(
                2024, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))
            ),
            id="sub_" + "f" * 32,
        ),
        Cursor(create_time=datetime(2025, 3, 1, 12, 30, 45, 1), id="sub_naive"),
    ],
    ids=["utc with microseconds", "whole seconds", "other offset", "naive"],
)
def test_a_token_decodes_to_the_cursor_it_was_made_from(cursor: Cursor) -> None:
    decoded = decode_page_token(encode_page_token(cursor, QUERY), QUERY)
    assert decoded == cursor
    assert decoded is not None
    assert decoded.create_time.utcoffset() == cursor.create_time.utcoffset()


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
    issued = json.loads(base64.urlsafe_b64decode(encode_page_token(CURSOR, QUERY) + "=="))
    forged = token_of({**issued, "f": "0" * 16})
    refusal(forged)
    # The same token, untouched, is accepted: the refusal is about the fingerprint.
    assert decode_page_token(token_of(issued), QUERY) == CURSOR


def test_every_truncation_of_a_token_is_refused() -> None:
    token = encode_page_token(CURSOR, QUERY)
    for length in range(1, len(token)):
        refusal(token[:length])


def test_the_refusal_is_an_invalid_argument_naming_only_the_page_token() -> None:
    with pytest.raises(InvalidArgument) as refused:
        decode_page_token("garbage!", QUERY)
    assert refused.value.violations == (FieldViolation("page_token", NOT_OURS),)
