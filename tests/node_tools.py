"""Running the Node.js scripts of tests/node from pytest.

`npm ci --prefix tests/node` (which `make test` runs) installs what they need. Without node
or those packages a test skips, except when `CI` is set, where it fails: CI must run them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["NODE_DIR", "NodeRun", "node_executable", "run_node_script"]

NODE_DIR = Path(__file__).resolve().parent / "node"


def node_executable(*, purpose: str) -> str:
    """The node executable, once every package of tests/node/package.json is installed;
    `purpose` says what needs it, in the skip or failure message."""
    executable = shutil.which("node")
    if executable is None:
        problem = "node is not on PATH"
    elif missing := _missing_packages():
        problem = f"{', '.join(missing)} not installed: run `npm ci --prefix tests/node`"
    else:
        return executable
    if os.environ.get("CI"):
        pytest.fail(f"{purpose} must run when CI is set: {problem}")
    pytest.skip(problem)


def _missing_packages() -> list[str]:
    wanted = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    return [name for name in wanted if not (NODE_DIR / "node_modules" / name).is_dir()]


@dataclass(frozen=True)
class NodeRun:
    returncode: int
    stdout: str
    stderr: str


async def run_node_script(
    node: str, script: Path, *args: str, seconds: float, env: dict[str, str] | None = None
) -> NodeRun:
    """Runs `node script args...` in tests/node, killed past `seconds`."""
    process = await asyncio.create_subprocess_exec(
        node,
        str(script),
        *args,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise
    assert process.returncode is not None
    return NodeRun(process.returncode, stdout.decode(), stderr.decode())
