"""Settings checks that span several settings, and how a refused setting is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dispatcher_service.settings import DispatcherSettings
from service_common.auth import TokensFileError, TokenStore
from service_common.settings import settings_problems, validation_problems


def test_the_lease_must_outlast_two_attempts() -> None:
    # A delivery may wait one attempt for its endpoint's slot, then make its own: a
    # shorter lease would let another replica claim and send it meanwhile.
    with pytest.raises(ValidationError) as refused:
        DispatcherSettings(lease_seconds=30, attempt_timeout_seconds=15)
    assert settings_problems(refused.value, "DISPATCHER_") == (
        "DISPATCHER_LEASE_SECONDS (30) must exceed twice DISPATCHER_ATTEMPT_TIMEOUT_SECONDS (15)"
    )
    assert DispatcherSettings(lease_seconds=31, attempt_timeout_seconds=15).lease_seconds == 31


def test_problems_name_each_variable_and_never_echo_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", "postgresql+psycopg://u:hunter2@db/x")
    monkeypatch.setenv("DISPATCHER_MAX_CONCURRENT_DELIVERIES", "0")
    monkeypatch.setenv("DISPATCHER_LEASE_SECONDS", "2")
    with pytest.raises(ValidationError) as refused:
        DispatcherSettings()
    problems = settings_problems(refused.value, "DISPATCHER_")
    assert problems == (
        "DISPATCHER_MAX_CONCURRENT_DELIVERIES: Input should be greater than or equal to 1"
    )
    assert "hunter2" not in problems
    monkeypatch.setenv("DISPATCHER_MAX_CONCURRENT_DELIVERIES", "1")
    with pytest.raises(ValidationError) as refused:
        DispatcherSettings()
    problems = settings_problems(refused.value, "DISPATCHER_")
    assert problems.startswith("DISPATCHER_LEASE_SECONDS (2) must exceed twice")
    assert "hunter2" not in problems


def test_a_malformed_tokens_file_is_named_field_by_field_without_pydantic_wording(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens.json"
    entry = {"sha256": "0" * 64, "tenant": "bad tenant!", "scopes": ["admin"]}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    with pytest.raises(TokensFileError) as raised:
        TokenStore.from_file(tokens)
    assert isinstance(raised.value.__cause__, ValidationError)
    problems = validation_problems(raised.value.__cause__)
    assert (
        problems == "tokens.0.tenant: must be '*' or a tenant id of letters, digits, '.', '_', '-'"
    )


def test_the_http_client_is_curl_unless_aiohttp_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DispatcherSettings().http_client == "curl"
    monkeypatch.setenv("DISPATCHER_HTTP_CLIENT", "aiohttp")
    assert DispatcherSettings().http_client == "aiohttp"
    monkeypatch.setenv("DISPATCHER_HTTP_CLIENT", "requests")
    with pytest.raises(ValidationError) as refused:
        DispatcherSettings()
    assert settings_problems(refused.value, "DISPATCHER_").startswith(
        "DISPATCHER_HTTP_CLIENT: Input should be 'curl' or 'aiohttp'"
    )


def test_payloads_may_not_outlive_their_events_unless_events_are_kept_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = DispatcherSettings()
    assert (defaults.retention_days, defaults.payload_retention_days) == (30, None)
    assert (defaults.prune_interval_seconds, defaults.prune_batch_size) == (600, 1000)
    monkeypatch.setenv("DISPATCHER_RETENTION_DAYS", "30")
    monkeypatch.setenv("DISPATCHER_PAYLOAD_RETENTION_DAYS", "45")
    with pytest.raises(ValidationError) as refused:
        DispatcherSettings()
    assert settings_problems(refused.value, "DISPATCHER_") == (
        "DISPATCHER_PAYLOAD_RETENTION_DAYS (45) must not exceed DISPATCHER_RETENTION_DAYS "
        "(30): events are deleted with their payloads"
    )
    monkeypatch.setenv("DISPATCHER_RETENTION_DAYS", "0")
    assert DispatcherSettings().payload_retention_days == 45
    monkeypatch.setenv("DISPATCHER_PAYLOAD_RETENTION_DAYS", "30")
    monkeypatch.setenv("DISPATCHER_RETENTION_DAYS", "30")
    assert DispatcherSettings().payload_retention_days == 30


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("RETENTION_DAYS", "-1", "Input should be greater than or equal to 0"),
        ("PAYLOAD_RETENTION_DAYS", "0", "Input should be greater than 0"),
        ("PRUNE_INTERVAL_SECONDS", "0", "Input should be greater than 0"),
        ("PRUNE_BATCH_SIZE", "0", "Input should be greater than or equal to 1"),
    ],
)
def test_retention_settings_are_refused_out_of_range(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(f"DISPATCHER_{name}", value)
    with pytest.raises(ValidationError) as refused:
        DispatcherSettings()
    assert settings_problems(refused.value, "DISPATCHER_") == f"DISPATCHER_{name}: {problem}"
