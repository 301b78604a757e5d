"""A service started on a port something else holds (a second `make run`) says so in one
line naming the setting to change, and exits non-zero: no traceback, no unclosed session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Tokens
from tests.dispatcher_process import dispatcher_environment


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port of 127.0.0.1 that a listening socket of this test holds."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _subscription_environment(tmp_path: Path, tokens: Tokens) -> dict[str, str]:
    return {
        **os.environ,
        "SUBSCRIPTIONS_GRPC_ADDR": "127.0.0.1:0",
        "SUBSCRIPTIONS_METRICS_ADDR": "127.0.0.1:0",
        "SUBSCRIPTIONS_DATABASE_URL": f"sqlite:///{tmp_path / 'subscriptions.db'}",
        "SUBSCRIPTIONS_AUTH_TOKENS_FILE": str(tokens.file),
    }


def _start(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-m", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_one_line_naming(ran: subprocess.CompletedProcess[str], setting: str, port: int) -> None:
    assert ran.returncode != 0
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert setting in lines[0]
    assert f"127.0.0.1:{port} is already in use" in lines[0]
    assert "Traceback" not in ran.stderr
    assert "Unclosed" not in ran.stderr


@pytest.mark.parametrize("setting", ["SUBSCRIPTIONS_GRPC_ADDR", "SUBSCRIPTIONS_METRICS_ADDR"])
def test_subscription_service_on_a_taken_port_says_which_setting_to_change_in_one_line(
    tmp_path: Path, tokens: Tokens, held_port: int, setting: str
) -> None:
    env = {**_subscription_environment(tmp_path, tokens), setting: f"127.0.0.1:{held_port}"}
    _assert_one_line_naming(_start("subscription_service", env), setting, held_port)


@pytest.mark.parametrize(
    "setting", ["DISPATCHER_GRPC_ADDR", "DISPATCHER_HTTP_ADDR", "DISPATCHER_METRICS_ADDR"]
)
def test_dispatcher_on_a_taken_port_says_which_setting_to_change_in_one_line(
    tmp_path: Path, tokens: Tokens, held_port: int, setting: str
) -> None:
    env = dispatcher_environment(
        database_url=f"sqlite:///{tmp_path / 'dispatcher.db'}",
        tokens=tokens,
        # Nothing listens there; the dispatcher must refuse before it tries.
        subscriptions_port=held_port,
        directory=tmp_path,
        overrides={setting: f"127.0.0.1:{held_port}", "DISPATCHER_LOG_LEVEL": "WARNING"},
    )
    _assert_one_line_naming(_start("dispatcher_service", env), setting, held_port)
