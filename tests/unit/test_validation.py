"""The validation rules of subscription fields, called directly."""

from __future__ import annotations

import base64

import pytest

from service_common.errors import FieldViolation
from subscription_service.validation import (
    MAX_DESCRIPTION_LENGTH,
    MAX_MESSAGE_TYPES,
    MAX_URL_LENGTH,
    check_description,
    check_disabled_reason,
    check_message_types,
    check_secret,
    check_url,
)

CLAIM_CREATED = "event.claim.created.v1"
CLAIM_UPDATED = "event.claim.updated.v1"
DEBT_SETTLED = "event.claimDebtPayment.settled.v1"
NOTE_CREATED = "event.note.created.v1"
META_CHANGED = "webhook.accountMeta.changed.v1"
KNOWN = frozenset({CLAIM_CREATED, CLAIM_UPDATED, DEBT_SETTLED, NOTE_CREATED, META_CHANGED})
FIELD = "subscription.message_types"


def only_violation(violations: list[FieldViolation], *, field: str) -> str:
    """The description of the single violation expected, after checking its field."""
    assert [v.field for v in violations] == [field], violations
    return violations[0].description


def url_of_length(length: int) -> str:
    prefix = "https://receiver.example.com/"
    return prefix + "a" * (length - len(prefix))


def secret_of(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


# URLs


@pytest.mark.parametrize(
    "url",
    [
        "https://receiver.example.com/hooks",
        "http://receiver.example.com",
        "https://receiver.example.com:8443/hooks?tenant=acme&kind=claims",
        "https://receiver.example.com:65535/",
        "http://127.0.0.1:8080/in",
        "http://[::1]:8080/in",
        "https://[2001:db8::17]/webhooks",
        "HTTPS://Receiver.Example.com/Path",
        "https://bücher.example/webhook",
        url_of_length(MAX_URL_LENGTH),
    ],
    ids=[
        "https",
        "http without path",
        "port and query",
        "highest port",
        "ipv4 literal",
        "ipv6 literal with port",
        "ipv6 literal",
        "upper-case scheme",
        "international host",
        "exactly the longest",
    ],
)
def test_absolute_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_url(url, field="subscription.url") == []


BAD_URLS = {
    "empty": ("", "required"),
    "relative path": ("/hooks", "absolute http:// or https://"),
    "no scheme": ("receiver.example.com/hooks", "absolute http:// or https://"),
    "ftp": ("ftp://files.example.com/in", "absolute http:// or https://"),
    "websocket": ("wss://receiver.example.com/in", "absolute http:// or https://"),
    "javascript": ("javascript:alert(1)", "absolute http:// or https://"),
    "file": ("file:///etc/passwd", "absolute http:// or https://"),
    "user and password": ("https://user:secret@receiver.example.com/", "credentials"),
    "user only": ("https://user@receiver.example.com/", "credentials"),
    "empty user": ("https://@receiver.example.com/", "credentials"),
    "no host": ("https:///hooks", "must name a host"),
    "opaque http": ("http:receiver.example.com", "must name a host"),
    "port only": ("https://:8443/hooks", "must name a host"),
    "fragment": ("https://receiver.example.com/in#section", "#fragment"),
    "port out of range": ("https://receiver.example.com:65536/", "invalid port"),
    "port not a number": ("https://receiver.example.com:https/", "invalid port"),
    "negative port": ("https://receiver.example.com:-1/", "invalid port"),
    "signed port": ("https://receiver.example.com:+443/", "invalid port"),
    "space": ("https://receiver .example.com/", "spaces or control characters"),
    "leading tab": ("\thttps://receiver.example.com/", "spaces or control characters"),
    "newline": ("https://receiver.example.com/in\nX-Injected: 1", "spaces or control"),
    "nul": ("https://receiver.example.com/\x00", "spaces or control characters"),
    "delete": ("https://receiver.example.com/\x7f", "spaces or control characters"),
    "one character too long": (url_of_length(MAX_URL_LENGTH + 1), f"at most {MAX_URL_LENGTH}"),
}


@pytest.mark.parametrize(("url", "why"), BAD_URLS.values(), ids=BAD_URLS.keys())
def test_bad_urls_get_one_violation_naming_the_field_and_the_reason(url: str, why: str) -> None:
    assert why in only_violation(check_url(url, field="subscription.url"), field="subscription.url")


@pytest.mark.parametrize(
    "url",
    ["https://[::1/hooks", "https://[receiver.example.com]/hooks"],
    ids=["unclosed bracket", "bracketed name"],
)
def test_malformed_bracketed_hosts_are_violations_not_exceptions(url: str) -> None:
    violations = check_url(url, field="subscription.url")
    assert [v.field for v in violations] == ["subscription.url"]


# Message types


def test_known_types_and_patterns_matching_them_are_accepted() -> None:
    entries = [CLAIM_CREATED, "event.claim.*", "event.*", "webhook.accountMeta.*", NOTE_CREATED]
    assert check_message_types(entries, known=KNOWN, field=FIELD) == []


def test_a_pattern_matches_whole_segments_only() -> None:
    # "event.claim.*" must not be satisfied by "event.claimDebtPayment...".
    violations = check_message_types(["event.claim.*"], known={DEBT_SETTLED}, field=FIELD)
    assert "matches no known message type" in only_violation(violations, field=f"{FIELD}[0]")


@pytest.mark.parametrize("pattern", ["event.nothingHere.*", "audit.*", f"{CLAIM_CREATED}.*"])
def test_a_pattern_matching_no_known_type_is_refused(pattern: str) -> None:
    violations = check_message_types([CLAIM_CREATED, pattern], known=KNOWN, field=FIELD)
    description = only_violation(violations, field=f"{FIELD}[1]")
    assert description == f"pattern '{pattern}' matches no known message type"


@pytest.mark.parametrize(
    "entry", ["event.claim.exploded.v1", "Event.Claim.Created.V1", "event.claim.created.v2"]
)
def test_an_exact_type_must_be_known_exactly(entry: str) -> None:
    violations = check_message_types([entry], known=KNOWN, field=FIELD)
    assert only_violation(violations, field=f"{FIELD}[0]") == f"unknown message type '{entry}'"


def test_with_no_known_types_every_entry_is_refused() -> None:
    violations = check_message_types([CLAIM_CREATED, "event.*"], known=(), field=FIELD)
    assert [v.field for v in violations] == [f"{FIELD}[0]", f"{FIELD}[1]"]


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "*",
        "event",
        "event.*.created.v1",
        "event.claim*",
        "event.claim.**",
        "*.created.v1",
        "event..created.v1",
        ".event.claim.created.v1",
        "event.claim.created.v1.",
        "event.claim created.v1",
        "event.claim-created.v1",
        f"{CLAIM_CREATED} ",
    ],
)
def test_entries_that_are_neither_a_type_nor_a_prefix_pattern_are_refused(entry: str) -> None:
    description = only_violation(
        check_message_types([entry], known=KNOWN, field=FIELD), field=f"{FIELD}[0]"
    )
    assert "is neither a message type" in description


def test_a_repeated_entry_is_refused_at_its_second_position() -> None:
    entries = [CLAIM_CREATED, "event.note.*", CLAIM_CREATED, "event.note.*"]
    violations = check_message_types(entries, known=KNOWN, field=FIELD)
    assert violations == [
        FieldViolation(f"{FIELD}[2]", f"'{CLAIM_CREATED}' is listed twice"),
        FieldViolation(f"{FIELD}[3]", "'event.note.*' is listed twice"),
    ]


def test_every_bad_entry_is_reported_not_only_the_first() -> None:
    entries = ["event.claim.exploded.v1", CLAIM_CREATED, "not a type", "event.void.*"]
    violations = check_message_types(entries, known=KNOWN, field=FIELD)
    assert [v.field for v in violations] == [f"{FIELD}[0]", f"{FIELD}[2]", f"{FIELD}[3]"]


def test_at_least_one_entry_is_required() -> None:
    violations = check_message_types([], known=KNOWN, field=FIELD)
    assert "at least one" in only_violation(violations, field=FIELD)


def test_up_to_the_maximum_number_of_entries_is_accepted_and_one_more_is_refused() -> None:
    many = [f"event.kind{i}.created.v1" for i in range(MAX_MESSAGE_TYPES + 1)]
    known = frozenset(many)
    assert check_message_types(many[:MAX_MESSAGE_TYPES], known=known, field=FIELD) == []
    violations = check_message_types(many, known=known, field=FIELD)
    assert only_violation(violations, field=FIELD) == f"at most {MAX_MESSAGE_TYPES} entries"


def test_an_entry_longer_than_200_characters_is_refused_without_being_echoed() -> None:
    longest = "event." + "a" * 191 + ".v1"
    assert len(longest) == 200
    too_long = "event." + "a" * 192 + ".v1"
    assert check_message_types([longest], known={longest}, field=FIELD) == []
    violations = check_message_types([too_long], known={too_long}, field=FIELD)
    assert only_violation(violations, field=f"{FIELD}[0]") == "at most 200 characters"


# Secrets


@pytest.mark.parametrize("size", [24, 32, 64])
def test_standard_webhooks_secrets_of_24_to_64_bytes_are_accepted(size: int) -> None:
    assert check_secret(secret_of(bytes(range(size))), field="subscription.secret") == []


def test_an_empty_secret_means_none_and_is_accepted() -> None:
    assert check_secret("", field="subscription.secret") == []


BAD_SECRETS = {
    "23 bytes": secret_of(b"k" * 23),
    "65 bytes": secret_of(b"k" * 65),
    "prefix only": "whsec_",
    "no prefix": base64.b64encode(b"k" * 32).decode(),
    "upper-case prefix": "WHSEC_" + base64.b64encode(b"k" * 32).decode(),
    "other prefix": "whsk_" + base64.b64encode(b"k" * 32).decode(),
    "not base64": "whsec_this is not base64 at all!!",
    "url-safe alphabet": "whsec_" + base64.urlsafe_b64encode(b"\xff" * 32).decode(),
    "missing padding": secret_of(b"k" * 25).rstrip("="),
    "inner newline": secret_of(b"k" * 24)[:20] + "\n" + secret_of(b"k" * 24)[20:],
    "non-ascii": "whsec_" + "é" * 40,
    "huge": secret_of(b"k" * 300),
}


@pytest.mark.parametrize("secret", BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_malformed_secrets_are_refused_without_echoing_them(secret: str) -> None:
    description = only_violation(
        check_secret(secret, field="subscription.secret"), field="subscription.secret"
    )
    assert description == "must be 'whsec_' followed by base64 of 24 to 64 random bytes"


# Descriptions


@pytest.mark.parametrize(
    "text",
    ["", "claims to the ledger", "x" * MAX_DESCRIPTION_LENGTH, "é" * MAX_DESCRIPTION_LENGTH],
    ids=["empty", "short", "longest", "longest in multi-byte characters"],
)
def test_descriptions_up_to_the_limit_in_characters_are_accepted(text: str) -> None:
    assert check_description(text, field="subscription.description") == []
    assert check_disabled_reason(text, field="subscription.disabled_reason") == []


def test_a_description_over_the_limit_is_refused_naming_the_limit() -> None:
    text = "x" * (MAX_DESCRIPTION_LENGTH + 1)
    violations = check_description(text, field="subscription.description")
    description = only_violation(violations, field="subscription.description")
    assert description == f"at most {MAX_DESCRIPTION_LENGTH} characters"
    reason = check_disabled_reason(text, field="subscription.disabled_reason")
    assert only_violation(reason, field="subscription.disabled_reason") == description
