"""The ``webhooks-contracts`` commands other than check, release and openapi."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.contracts.contract_samples import EXAMPLE_TYPE, valid_payload
from webhook_contracts import Registry
from webhook_contracts.cli import main


def write(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def test_validate_accepts_a_body_a_payload_and_details(
    tmp_path: Path, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    (example,) = registry.get(EXAMPLE_TYPE).examples
    files = [
        write(tmp_path / "body.json", example),
        write(tmp_path / "payload.json", example["payload"]),
        write(tmp_path / "details.json", example["payload"]["details"]),
    ]
    assert main(["validate", *map(str, files)]) == 0
    output = capsys.readouterr().out
    for part in ("webhook", "payload", "details"):
        assert f"valid {part} of {EXAMPLE_TYPE}" in output


def test_validate_fails_and_names_every_failing_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = valid_payload("event.claim.created.v1")
    payload["details"]["amount"] = "100"
    del payload["details"]["dueDate"]
    assert main(["validate", str(write(tmp_path / "payload.json", payload))]) == 1
    output = capsys.readouterr().out
    assert "payload.details.amount:" in output
    assert "payload.details.dueDate: is required" in output


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "not JSON"), (json.dumps({"details": {"messageType": "x.v1"}}), "no contract")],
)
def test_validate_reports_unreadable_or_unknown_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    path = tmp_path / "input.json"
    path.write_text(content, encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    assert expected in capsys.readouterr().out


def test_list_prints_the_types_a_pattern_selects(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "event.strategy.*"]) == 0
    assert capsys.readouterr().out.split() == [
        "event.strategy.assigned.v1",
        "event.strategy.finished.v1",
        "event.strategy.paused.v1",
        "event.strategy.resumed.v1",
        "event.strategy.stopped.v1",
    ]
    assert main(["list", "event.strategy*"]) == 2


def test_schema_prints_the_self_contained_contract(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "event.claim.created.v1"]) == 0
    assert json.loads(capsys.readouterr().out) == registry.bundle("event.claim.created.v1")
    assert main(["schema", "event.claim.created.v7"]) == 2
