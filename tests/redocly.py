"""Runs `redocly lint` (tests/node) on an OpenAPI document, offline, with the committed config.

Node and the packages of tests/node are needed: a test without them is skipped, or fails when
CI is set (as the other Node tests do).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.node_tools import NODE_DIR, node_executable

REDOCLY = NODE_DIR / "node_modules" / "@redocly" / "cli" / "bin" / "cli.js"
CONFIG = NODE_DIR / "redocly.yaml"
LINT_TIMEOUT_SECONDS = 120
# Redocly must never reach the network: no telemetry, no check for a newer version.
OFFLINE = {"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"}


@dataclass(frozen=True)
class LintReport:
    errors: int
    warnings: int
    problems: list[dict[str, Any]]

    def rules(self) -> set[str]:
        return {problem["ruleId"] for problem in self.problems}

    def summary(self, limit: int = 20) -> str:
        lines = [
            f"{problem['severity']} {problem['ruleId']}: {problem['message'][:200]} at "
            + ", ".join(location.get("pointer", "?") for location in problem["location"][:1])
            for problem in self.problems[:limit]
        ]
        return "\n".join([f"{self.errors} errors, {self.warnings} warnings", *lines])


def lint(document: Path, *, config: Path = CONFIG) -> LintReport:
    """`redocly lint --format=json` of `document`: every problem, none left out."""
    completed = subprocess.run(
        [
            node_executable(purpose="the Redocly lint"),
            str(REDOCLY),
            "lint",
            str(document),
            "--config",
            str(config),
            "--format=json",
            "--max-problems=100000",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=LINT_TIMEOUT_SECONDS,
        # Not the repository: no other redocly.yaml or .redocly.lint-ignore.yaml is picked up.
        cwd=document.parent,
        env={**os.environ, **OFFLINE},
    )
    assert completed.stdout, (
        f"redocly printed nothing (exit {completed.returncode}): {completed.stderr[-2000:]}"
    )
    report = json.loads(completed.stdout)
    totals = report["totals"]
    # Exit 1 means problems were found; anything else is redocly failing to run.
    assert completed.returncode in (0, 1), completed.stderr[-2000:]
    return LintReport(totals["errors"], totals["warnings"], report["problems"])
