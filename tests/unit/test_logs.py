"""Log records: credentials masked whoever logs them, context ids on every record."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from service_common.logs import configure_logging, log_context, redact

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
    "-----END PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("authorization: Bearer tok-123.abc", "Bearer [redacted]", "tok-123"),
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw set", "whsec_[redacted]", "MfKQ9r8"),
        (f"key {PEM} loaded", "[redacted private key]", "MIGHAgEA"),
        ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIc (cut short)", "[redacted", "MHcCAQEE"),
    ],
)
def test_credentials_are_masked(text: str, kept: str, gone: str) -> None:
    masked = redact(text)
    assert kept in masked
    assert gone not in masked


def test_ordinary_text_is_left_alone() -> None:
    text = "delivery dlv_01 to https://example.com/hook answered 500"
    assert redact(text) == text


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("root_handlers")
def test_json_lines_carry_the_context_and_mask_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("webhooks.test")
    with log_context(message_id="m-1", delivery_id="dlv_1"):
        log.info("calling with %s", "Bearer abc")
        try:
            raise ValueError(PEM)
        except ValueError:
            log.exception("failed")
    log.warning("outside")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == [
        "calling with Bearer [redacted]",
        "failed",
        "outside",
    ]
    assert lines[0]["message_id"] == "m-1"
    assert lines[0]["delivery_id"] == "dlv_1"
    assert lines[0]["level"] == "INFO"
    assert lines[0]["logger"] == "webhooks.test"
    assert "MIGHAgEA" not in lines[1]["exc_info"]
    assert "message_id" not in lines[2]


@pytest.mark.usefixtures("root_handlers")
def test_text_lines_end_with_the_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "text")
    with log_context(delivery_id="dlv_2"):
        logging.getLogger("webhooks.test").info("hello")
    assert capsys.readouterr().err.rstrip().endswith("INFO webhooks.test hello delivery_id=dlv_2")
