"""`python -m dispatcher_service` as a child process, for tests that kill or multiply it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from tests.conftest import Tokens

__all__ = ["DispatcherProcess", "dispatcher_environment"]

LISTENING = re.compile(r"dispatcher listening on 127\.0\.0\.1:(\d+)")


def dispatcher_environment(
    *,
    database_url: str,
    tokens: Tokens,
    subscriptions_port: int,
    directory: Path,
    overrides: Mapping[str, str] = {},
) -> dict[str, str]:
    """This process's environment plus what a test's dispatcher process needs: free ports,
    `database_url`, the tests' tokens (the platform token written to `directory`), keys in
    `directory`/keys, delivery to loopback, a quick poll and INFO logs (its ports are read
    from the log); then `overrides`, variables by their full names."""
    token_file = directory / "platform-token"
    token_file.write_text(tokens.platform)
    return {
        **os.environ,
        "DISPATCHER_GRPC_ADDR": "127.0.0.1:0",
        "DISPATCHER_HTTP_ADDR": "127.0.0.1:0",
        "DISPATCHER_METRICS_ADDR": "127.0.0.1:0",
        "DISPATCHER_DATABASE_URL": database_url,
        "DISPATCHER_AUTH_TOKENS_FILE": str(tokens.file),
        "DISPATCHER_SUBSCRIPTIONS_ADDR": f"127.0.0.1:{subscriptions_port}",
        "DISPATCHER_SUBSCRIPTIONS_TOKEN_FILE": str(token_file),
        "DISPATCHER_ALLOWED_TARGET_NETWORKS": "127.0.0.0/8",
        "DISPATCHER_SIGNING_KEYS_DIR": str(directory / "keys"),
        "DISPATCHER_POLL_INTERVAL_SECONDS": "0.05",
        "DISPATCHER_LOG_LEVEL": "INFO",
        **overrides,
    }


def _port_of(stream: IO[str], deadline: float, lines: list[str]) -> int:
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if match := LISTENING.search(line):
            return int(match.group(1))
    raise AssertionError("the dispatcher did not report its address")


class DispatcherProcess:
    """The dispatcher with the given environment (log level INFO: its port is read from
    the log), its log drained into `log_lines`; `start` may be called again after `kill`
    or `stop`."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self.process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None
        self._terminated = False
        self.log_lines: list[str] = []

    async def start(self) -> int:
        """Starts it and returns its gRPC port."""
        self.spawn()
        return await self.listening_port()

    def spawn(self) -> None:
        self._terminated = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher_service"],
            env=self._env,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def listening_port(self) -> int:
        """The port from its log; from then on its log is drained in the background."""
        assert self.process is not None
        stderr = self.process.stderr
        assert stderr is not None
        # In a thread: services it talks to may run on this event loop.
        port = await asyncio.to_thread(_port_of, stderr, time.monotonic() + 30, self.log_lines)

        def drain() -> None:
            # Keep reading its log so a full pipe never blocks it; EOF comes when it exits.
            for line in stderr:
                self.log_lines.append(line)

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        return port

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close_log()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None and not self._terminated:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> None:
        self.terminate()
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_log()

    def _close_log(self) -> None:
        if self._drain is not None:
            self._drain.join(timeout=5)
            self._drain = None
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
