"""The OpenAPI document lints clean under Redocly's recommended rules (tests/node/redocly.yaml).

What is linted is the file `webhooks-contracts openapi` writes, which is `build_openapi()`:
the document the dispatcher serves at /openapi.json (test_http_api checks that the running
server serves exactly `build_openapi()`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.redocly import lint
from webhook_contracts import Registry, build_openapi
from webhook_contracts.cli import main

pytestmark = pytest.mark.node


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_the_published_openapi_document_has_no_redocly_errors_or_warnings(
    tmp_path: Path, registry: Registry
) -> None:
    published = tmp_path / "openapi.json"
    assert main(["openapi", "--output", str(published)]) == 0
    assert json.loads(published.read_text(encoding="utf-8")) == build_openapi(registry)
    report = lint(published)
    assert (report.errors, report.warnings) == (0, 0), report.summary()


def test_the_openapi_document_for_a_named_server_has_no_redocly_errors_or_warnings(
    tmp_path: Path, registry: Registry
) -> None:
    document = build_openapi(registry, server_url="https://webhooks.acme.test")
    report = lint(write(tmp_path / "openapi.json", document))
    assert (report.errors, report.warnings) == (0, 0), report.summary()


def test_the_lint_config_reports_what_the_generator_avoids(
    tmp_path: Path, registry: Registry
) -> None:
    # Each fault undoes one thing the generator does for the linter: the rules that would
    # catch it must still be on in the committed config.
    broken = json.loads(json.dumps(build_openapi(registry)))  # shares nothing with registry
    del broken["servers"]
    del broken["paths"]["/openapi.json"]["get"]["security"]
    del broken["paths"]["/.well-known/jwks.json"]["get"]["responses"]["400"]
    broken["components"]["schemas"]["Problem"]["required"] = ["nowhere"]
    broken["components"]["schemas"]["Unused"] = {"type": "string"}
    publish = broken["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    example = next(iter(publish["examples"].values()))["value"]
    example["messageId"] = 12345
    report = lint(write(tmp_path / "broken.json", broken))
    assert report.rules() == {
        "no-empty-servers",
        "security-defined",
        "operation-4xx-response",
        "no-required-schema-properties-undefined",
        "no-unused-components",
        "no-invalid-media-type-examples",
    }, report.summary()
    assert report.errors >= 2, report.summary()
