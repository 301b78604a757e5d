"""What every sender of delivery attempts shares, whatever HTTP library it drives.

A sender posts one body to one URL and reports an `AttemptResult`, never raising. Error
texts start with a stable prefix that callers may match on: `target refused:`,
`invalid URL:`, `timeout:`, `DNS error:`, `TLS error:`, `connection error:`,
`redirect not followed:`; a response whose body then failed keeps its status and gets
`reading the response:` before one of those.
"""

from __future__ import annotations

from dataclasses import dataclass

import yarl

from dispatcher_service.ssrf import TargetPolicy, TargetRefused, check_host_literal

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_USER_AGENT",
    "AttemptResult",
    "CheckedTargets",
    "Timeouts",
    "endpoint_of",
    "redirect_error",
]

DEFAULT_USER_AGENT = "webhooks-dispatcher/0.1"
# Matches the attempt table's response_snippet column; enough to show a receiver's error.
DEFAULT_MAX_RESPONSE_BYTES = 2048
MAX_RETRY_AFTER_CHARS = 64
_MAX_LOCATION_CHARS = 200
# Checked URLs kept; the table is emptied when full, so it stays bounded.
_MAX_REMEMBERED_TARGETS = 10_000


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Seconds allowed for each part of an attempt.

    `connect` bounds the TCP (and TLS) handshake; `total` bounds everything: handshake,
    request, response headers and the bounded part of the body.
    """

    connect: float = 5.0
    total: float = 15.0

    def __post_init__(self) -> None:
        if not (self.connect > 0 and self.total > 0):
            raise ValueError("timeouts must be positive")

    def total_exceeded(self) -> str:
        return f"timeout: no response within {self.total}s"


@dataclass(frozen=True, kw_only=True)
class AttemptResult:
    """What one attempt produced; `status_code` is None when no response arrived."""

    status_code: int | None
    # Seconds from the start of the request to its end.
    latency: float
    error: str | None
    response_snippet: str
    # The raw header, for `retry.parse_retry_after`; None when absent.
    retry_after: str | None

    @classmethod
    def failed(cls, error: str, *, latency: float = 0.0) -> AttemptResult:
        return cls(
            status_code=None,
            latency=latency,
            error=error,
            response_snippet="",
            retry_after=None,
        )


def endpoint_of(url: str) -> str:
    """The endpoint (scheme://host:port) whose slots a delivery to `url` takes; a URL
    that cannot be parsed is an endpoint of its own (its attempt fails at once)."""
    try:
        parsed = yarl.URL(url)
    except ValueError:
        return url
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def redirect_error(status: int, location: str | None) -> str | None:
    """Why a 3xx answer is a failure: redirects are never followed."""
    if not 300 <= status <= 399:
        return None
    shown = (location or "")[:_MAX_LOCATION_CHARS] or "(no Location)"
    return f"redirect not followed: {status} to {shown}"


def _parse_url(url: str) -> yarl.URL:
    """The URL to post to; ValueError for anything that is not absolute http(s)."""
    parsed = yarl.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("expected an absolute http:// or https:// URL")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError("credentials in the URL are not sent")
    return parsed


class CheckedTargets:
    """The URLs deliveries may post to, checked once each.

    A URL is parsed and its host, if an IP literal, checked against the policy (HTTP
    clients never resolve a literal, so a resolver-side check alone would let
    http://127.0.0.1/ through). Names are checked again at every connection by the sender.
    The answer is remembered per URL: the policy and a literal never change.
    """

    def __init__(self, policy: TargetPolicy) -> None:
        self._policy = policy
        self._checked: dict[str, yarl.URL | str] = {}

    def check(self, url: str) -> yarl.URL | str:
        """The URL to post to, or the error text saying why it is refused."""
        checked = self._checked.get(url)
        if checked is None:
            checked = self._check(url)
            if len(self._checked) >= _MAX_REMEMBERED_TARGETS:
                self._checked.clear()
            self._checked[url] = checked
        return checked

    def _check(self, url: str) -> yarl.URL | str:
        try:
            parsed = _parse_url(url)
            check_host_literal(parsed.raw_host or "", self._policy)
        except ValueError as exc:
            return f"invalid URL: {exc}"
        except TargetRefused as exc:
            return f"target refused: {exc}"
        return parsed
