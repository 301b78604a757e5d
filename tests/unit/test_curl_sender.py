"""The libcurl sender's callbacks, which run on its thread: headers, the bounded body, and
the last SSRF check on the address curl is about to connect to."""

from __future__ import annotations

import socket
from collections import namedtuple

import pycurl
import pytest

from dispatcher_service.curl_sender import _Transfer, header_value
from dispatcher_service.sending import Timeouts
from dispatcher_service.ssrf import TargetPolicy

# What pycurl hands the open-socket callback.
SockAddr = namedtuple("SockAddr", "family socktype protocol addr")


@pytest.fixture
def transfer() -> _Transfer:
    return _Transfer([], policy=TargetPolicy(), max_response_bytes=8)


def test_headers_are_read_from_the_final_answer_only() -> None:
    block = (
        b"HTTP/1.1 100 Continue\r\n"
        b"Retry-After: 5\r\n"
        b"\r\n"
        b"HTTP/1.1 429 Too Many Requests\r\n"
        b"retry-after:  120 \r\n"
        b"Location: https://example.com/next\r\n"
        b"X-Other: 1\r\n"
        b"\r\n"
    )

    assert header_value(block, b"retry-after") == "120"
    assert header_value(block, b"location") == "https://example.com/next"
    assert header_value(block, b"x-missing") is None


def test_a_header_from_an_interim_answer_is_not_the_final_one() -> None:
    block = b"HTTP/1.1 103 Early Hints\r\nRetry-After: 5\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n"
    assert header_value(block, b"retry-after") is None


def test_the_body_is_read_up_to_the_limit_and_then_the_transfer_ends(transfer: _Transfer) -> None:
    assert transfer._write(b"abc") is None
    assert transfer._write(b"defghij") == 0  # curl ends the transfer on a short count
    assert b"".join(transfer._chunks) == b"abcdefgh"
    assert transfer._capped


def test_a_body_that_fits_is_read_whole(transfer: _Transfer) -> None:
    assert transfer._write(b"12345678") is None
    assert not transfer._capped


def test_ending_at_the_limit_is_no_error(transfer: _Transfer) -> None:
    transfer._write(b"x" * 20)
    assert transfer._describe(pycurl.E_WRITE_ERROR, "Failure writing output", Timeouts()) is None


@pytest.mark.parametrize(
    ("address", "kind"),
    [("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("169.254.169.254", "cloud metadata")],
)
def test_a_socket_to_a_refused_address_is_never_opened(
    transfer: _Transfer, address: str, kind: str
) -> None:
    opened = transfer._open_socket(
        0, SockAddr(socket.AF_INET, socket.SOCK_STREAM, 6, (address, 443))
    )

    assert opened == pycurl.SOCKET_BAD
    error = transfer._describe(pycurl.E_COULDNT_CONNECT, "Could not connect", Timeouts())
    assert error == f"target refused: {address} is not allowed ({kind})"


def test_a_socket_to_an_allowed_address_is_opened() -> None:
    allowed = _Transfer([], policy=TargetPolicy.parse("127.0.0.0/8"), max_response_bytes=8)
    opened = allowed._open_socket(
        0, SockAddr(socket.AF_INET, socket.SOCK_STREAM, 6, ("127.0.0.1", 443))
    )

    assert not isinstance(opened, int)
    assert opened.fileno() >= 0
    del opened  # pycurl keeps a duplicate; the original is closed when it is let go


@pytest.mark.parametrize(
    ("code", "prefix"),
    [
        (pycurl.E_COULDNT_RESOLVE_HOST, "DNS error: "),
        (pycurl.E_PEER_FAILED_VERIFICATION, "TLS error: "),
        (pycurl.E_SSL_CONNECT_ERROR, "TLS error: "),
        (pycurl.E_COULDNT_CONNECT, "connection error: "),
        (pycurl.E_RECV_ERROR, "connection error: "),
    ],
)
def test_curl_errors_get_the_stable_prefixes(transfer: _Transfer, code: int, prefix: str) -> None:
    error = transfer._describe(code, "what curl said", Timeouts())
    assert error is not None
    assert error.startswith(prefix)
    assert "what curl said" in error


def test_a_timeout_before_any_connection_names_the_connect_timeout(transfer: _Transfer) -> None:
    error = transfer._describe(pycurl.E_OPERATION_TIMEDOUT, "timed out", Timeouts(connect=2.0))
    assert error == "timeout: no connection within 2.0s"
