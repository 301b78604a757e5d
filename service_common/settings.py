"""Settings both services have, under their own prefix (`SUBSCRIPTIONS_`, `DISPATCHER_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings

from service_common.event_loop import EventLoop

__all__ = ["ServiceSettings", "settings_problems", "validation_problems"]


class ServiceSettings(BaseSettings):
    # JSON file of accepted tokens (see the README). Without one every call is refused.
    auth_tokens_file: Path | None = None
    # Seconds that calls in flight get to finish on shutdown.
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    # false: the database must already be migrated (`python -m <service>.migrate`).
    migrate_on_start: bool = True
    log_level: str = "INFO"
    # json: one JSON object per line (for log collectors); text: for a terminal.
    log_format: Literal["json", "text"] = "json"
    # host:port of the Prometheus `/metrics` endpoint; empty turns it off.
    metrics_addr: str = ""
    # Where finished spans go: none (tracing off), otlp (`OTEL_EXPORTER_OTLP_*`), console.
    tracing_exporter: Literal["none", "otlp", "console"] = "none"
    # PEM certificate chain and private key: with both, the service serves TLS only.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # With TLS on: clients must present a certificate signed by this CA (mutual TLS).
    tls_client_ca_file: Path | None = None
    # The event loop: asyncio (the standard library's) or uvloop (libuv). Measured side by
    # side (README, Benchmarks) they deliver at the same CPU cost, so the default is the
    # standard one.
    event_loop: EventLoop = "asyncio"


def settings_problems(error: ValidationError, prefix: str) -> str:
    """One line naming each bad setting by its variable (`prefix` + name), never echoing
    a value given: a database URL may hold a password."""
    problems = []
    for problem in error.errors(include_input=False):
        message = _message(problem)
        if problem["loc"]:
            message = f"{prefix}{'_'.join(map(str, problem['loc'])).upper()}: {message}"
        problems.append(message)
    return "; ".join(problems)


def validation_problems(error: ValidationError) -> str:
    """One line naming each wrong field of a file's content by its path (`tokens.0.tenant`),
    without pydantic's type codes, links, or the values given (a file may hold secrets)."""
    return "; ".join(
        f"{'.'.join(map(str, problem['loc']))}: {_message(problem)}"
        if problem["loc"]
        else _message(problem)
        for problem in error.errors(include_input=False)
    )


def _message(problem: ErrorDetails) -> str:
    # Pydantic words a validator's own exception as "Value error, <its message>".
    return problem["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
