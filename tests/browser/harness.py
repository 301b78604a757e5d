"""The platform the console's browser tests drive: real processes on loopback.

`running_platform` starts `python -m subscription_service`, `python -m dispatcher_service` and
`python -m console` on SQLite files in a directory, each on a free port it picks itself (the
port is read from its log), and waits until each answers its health check. `running_receiver`
serves the scripted test receiver (tests/receiver.py) from a thread of its own, and `Cli`
runs the `webhooks` command as a subprocess, as an operator would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_common.auth import hash_token
from tests.receiver import Receiver

__all__ = [
    "ROOT",
    "Cli",
    "Platform",
    "ThreadedReceiver",
    "Tokens",
    "running_platform",
    "running_receiver",
    "subscription_secret",
]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_EVENT = ROOT / "examples" / "claim-created.json"
TENANT_SCOPES = (
    "publish",
    "subscriptions:read",
    "subscriptions:write",
    "deliveries:read",
    "deliveries:write",
)
# A failed attempt is retried after about a second (not five): a test sees both attempts.
RETRY_SCHEDULE = "0s,1s,1s,1s,1s"
START_WITHIN = 30.0
# Variables of the services and the CLI that a developer's shell may hold: never inherited.
_OWN_PREFIXES = ("SUBSCRIPTIONS_", "DISPATCHER_", "CONSOLE_", "WEBHOOKS_")
T = TypeVar("T")


def subscription_secret() -> str:
    """A new Standard Webhooks secret, as the subscription forms take it."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class Tokens:
    """The tokens of the tests' tokens file, each random, by who holds it."""

    directory: Path
    acme_admin: str
    acme_viewer: str
    acme_publisher: str
    globex_admin: str
    platform: str

    @property
    def file(self) -> Path:
        """The tokens file both services read (hashes, tenants and scopes)."""
        return self.directory / "tokens.json"

    def file_of(self, token: str) -> Path:
        """A file holding `token` alone, for `--token-file` and the dispatcher."""
        path = self.directory / f"token-{hash_token(token)[:16]}"
        if not path.exists():
            path.write_text(token + "\n")
        return path

    def all(self) -> tuple[str, ...]:
        return (
            self.acme_admin,
            self.acme_viewer,
            self.acme_publisher,
            self.globex_admin,
            self.platform,
        )


def write_tokens(directory: Path) -> Tokens:
    """New random tokens, and the tokens file that grants them their tenants and scopes."""
    tokens = Tokens(
        directory=directory,
        acme_admin=f"acme-admin-{secrets.token_hex(16)}",
        acme_viewer=f"acme-viewer-{secrets.token_hex(16)}",
        acme_publisher=f"acme-publisher-{secrets.token_hex(16)}",
        globex_admin=f"globex-admin-{secrets.token_hex(16)}",
        platform=f"platform-{secrets.token_hex(16)}",
    )
    entries = [
        (tokens.acme_admin, "acme", list(TENANT_SCOPES)),
        (tokens.acme_viewer, "acme", ["subscriptions:read", "deliveries:read"]),
        (tokens.acme_publisher, "acme", ["publish"]),
        (tokens.globex_admin, "globex", list(TENANT_SCOPES)),
        (tokens.platform, "*", ["admin"]),
    ]
    document = {
        "tokens": [
            {"sha256": hash_token(token), "tenant": tenant, "scopes": scopes}
            for token, tenant, scopes in entries
        ]
    }
    tokens.file.write_text(json.dumps(document))
    return tokens


def _base_environment() -> dict[str, str]:
    """This process's environment without any setting of the services, console or CLI."""
    return {name: value for name, value in os.environ.items() if not name.startswith(_OWN_PREFIXES)}


class ServiceProcess:
    """`python -m <module>` with `env`, its log (stdout and stderr) written to `log_path`."""

    def __init__(self, module: str, env: Mapping[str, str], log_path: Path) -> None:
        self.module = module
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=log_path.parent,
            )

    def port_from_log(self, pattern: re.Pattern[str], *, within: float = START_WITHIN) -> int:
        """The port its log reports on the first line `pattern` (one group: the port) matches."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if match := pattern.search(self.log_path.read_text(errors="replace")):
                return int(match.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.module} did not report its port:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ten seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def _started(
    module: str, env: Mapping[str, str], directory: Path, listening: re.Pattern[str]
) -> Iterator[tuple[ServiceProcess, int]]:
    """Runs `module` until the block ends; yields it and the port its log reports."""
    process = ServiceProcess(module, env, directory / f"{module}.log")
    try:
        yield process, process.port_from_log(listening)
    finally:
        process.stop()


def wait_for_grpc_health(addr: str, *, within: float = START_WITHIN) -> None:
    """Waits until the gRPC server at `addr` answers SERVING to a health check."""
    deadline = time.monotonic() + within
    with grpc.insecure_channel(addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{addr} is not SERVING after {within} s"
            time.sleep(0.1)


def wait_for_http(url: str, *, within: float = START_WITHIN) -> None:
    """Waits until GET `url` answers 200."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310  # loopback
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        assert time.monotonic() < deadline, f"{url} does not answer 200 after {within} s"
        time.sleep(0.1)


@dataclass(frozen=True)
class Cli:
    """The `webhooks` command (`python -m webhooks_cli`) against the test platform."""

    subscriptions_addr: str
    dispatcher_addr: str
    tokens: Tokens

    def run(self, token: str, *args: str) -> Any:
        """Runs `webhooks --output json <args>` with `token` (from a file); its JSON answer."""
        command = [
            sys.executable,
            "-m",
            "webhooks_cli",
            "--subscriptions-addr",
            self.subscriptions_addr,
            "--dispatcher-addr",
            self.dispatcher_addr,
            "--token-file",
            str(self.tokens.file_of(token)),
            "--output",
            "json",
            *args,
        ]
        result = subprocess.run(
            command,
            env=_base_environment(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, f"webhooks {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout)

    def publish_example(self, token: str, directory: Path) -> dict[str, Any]:
        """Publishes examples/claim-created.json under a new messageId; the CLI's answer."""
        event = json.loads(EXAMPLE_EVENT.read_text())
        event["messageId"] = str(uuid.uuid4())
        path = directory / f"event-{event['messageId']}.json"
        path.write_text(json.dumps(event))
        answer: dict[str, Any] = self.run(token, "events", "publish", str(path))
        return answer

    def create_subscription(self, token: str, url: str, *message_types: str) -> str:
        """Creates an enabled subscription; its id."""
        types = [arg for message_type in message_types for arg in ("--type", message_type)]
        created = self.run(token, "subscriptions", "create", "--url", url, *types)
        subscription_id: str = created["id"]
        return subscription_id

    def subscription(self, token: str, subscription_id: str) -> dict[str, Any]:
        """`webhooks subscriptions show`: the subscription as the service has it."""
        found: dict[str, Any] = self.run(token, "subscriptions", "show", subscription_id)
        return found

    def deliveries(self, token: str, message_id: str) -> list[dict[str, Any]]:
        """`webhooks deliveries list --message-id`."""
        found: list[dict[str, Any]] = self.run(
            token, "deliveries", "list", "--message-id", message_id
        )
        return found


@dataclass(frozen=True)
class Platform:
    """Both services and the console, running; and the CLI pointed at them."""

    console_url: str
    subscriptions_addr: str
    dispatcher_addr: str
    tokens: Tokens
    cli: Cli
    directory: Path


def _subscriptions_environment(directory: Path, tokens: Tokens) -> dict[str, str]:
    return {
        **_base_environment(),
        "SUBSCRIPTIONS_GRPC_ADDR": "127.0.0.1:0",
        "SUBSCRIPTIONS_DATABASE_URL": f"sqlite:///{directory / 'subscriptions.db'}",
        "SUBSCRIPTIONS_AUTH_TOKENS_FILE": str(tokens.file),
        "SUBSCRIPTIONS_METRICS_ADDR": "",
        "SUBSCRIPTIONS_SHUTDOWN_GRACE_SECONDS": "1",
        "SUBSCRIPTIONS_LOG_FORMAT": "text",
        "SUBSCRIPTIONS_LOG_LEVEL": "INFO",
    }


def _dispatcher_environment(
    directory: Path, tokens: Tokens, subscriptions_addr: str
) -> dict[str, str]:
    return {
        **_base_environment(),
        "DISPATCHER_GRPC_ADDR": "127.0.0.1:0",
        "DISPATCHER_HTTP_ADDR": "127.0.0.1:0",
        "DISPATCHER_METRICS_ADDR": "",
        "DISPATCHER_DATABASE_URL": f"sqlite:///{directory / 'dispatcher.db'}",
        "DISPATCHER_AUTH_TOKENS_FILE": str(tokens.file),
        "DISPATCHER_SUBSCRIPTIONS_ADDR": subscriptions_addr,
        "DISPATCHER_SUBSCRIPTIONS_TOKEN_FILE": str(tokens.file_of(tokens.platform)),
        "DISPATCHER_ALLOWED_TARGET_NETWORKS": "127.0.0.0/8",
        "DISPATCHER_SIGNING_KEYS_DIR": str(directory / "signing-keys"),
        "DISPATCHER_RETRY_SCHEDULE": RETRY_SCHEDULE,
        "DISPATCHER_POLL_INTERVAL_SECONDS": "0.05",
        "DISPATCHER_SHUTDOWN_GRACE_SECONDS": "1",
        "DISPATCHER_LOG_FORMAT": "text",
        "DISPATCHER_LOG_LEVEL": "INFO",
    }


def _console_environment(
    directory: Path, subscriptions_addr: str, dispatcher_addr: str
) -> dict[str, str]:
    return {
        **_base_environment(),
        "CONSOLE_HTTP_ADDR": "127.0.0.1:0",
        "CONSOLE_SUBSCRIPTIONS_ADDR": subscriptions_addr,
        "CONSOLE_DISPATCHER_ADDR": dispatcher_addr,
        "CONSOLE_SESSION_KEY_FILE": str(directory / "console-session-key"),
        "CONSOLE_LOG_FORMAT": "text",
        "CONSOLE_LOG_LEVEL": "INFO",
    }


@contextlib.contextmanager
def running_platform(directory: Path) -> Iterator[Platform]:
    """Both services and the console on SQLite files in `directory`, until the block ends."""
    tokens = write_tokens(directory)
    with contextlib.ExitStack() as stack:
        _, port = stack.enter_context(
            _started(
                "subscription_service",
                _subscriptions_environment(directory, tokens),
                directory,
                re.compile(r"subscription service listening on 127\.0\.0\.1:(\d+)"),
            )
        )
        subscriptions_addr = f"127.0.0.1:{port}"
        wait_for_grpc_health(subscriptions_addr)
        _, port = stack.enter_context(
            _started(
                "dispatcher_service",
                _dispatcher_environment(directory, tokens, subscriptions_addr),
                directory,
                re.compile(r"dispatcher listening on 127\.0\.0\.1:(\d+)"),
            )
        )
        dispatcher_addr = f"127.0.0.1:{port}"
        wait_for_grpc_health(dispatcher_addr)
        _, port = stack.enter_context(
            _started(
                "console",
                _console_environment(directory, subscriptions_addr, dispatcher_addr),
                directory,
                re.compile(r"console on http://127\.0\.0\.1:(\d+)"),
            )
        )
        console_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{console_url}/healthz")
        yield Platform(
            console_url=console_url,
            subscriptions_addr=subscriptions_addr,
            dispatcher_addr=dispatcher_addr,
            tokens=tokens,
            cli=Cli(subscriptions_addr, dispatcher_addr, tokens),
            directory=directory,
        )


class ThreadedReceiver:
    """tests/receiver.py's scripted receiver, served by an event loop in a thread of its own
    (the browser tests are synchronous)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.receiver: Receiver | None = None

    def start(self) -> None:
        self._thread.start()
        self.receiver = self._run(self._started())

    def stop(self) -> None:
        if self.receiver is not None:
            self._run(self.receiver.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def url(self, path: str) -> str:
        assert self.receiver is not None
        return self.receiver.url(path)

    def script(self, path: str, *answers: int) -> None:
        """Each request to `path` gets the next of `answers` (the last one repeated)."""
        assert self.receiver is not None
        self._run(self._script(self.receiver, path, answers))

    def count(self, path: str) -> int:
        """How many requests to `path` have arrived."""
        assert self.receiver is not None
        return len(self.receiver.on(path))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    @staticmethod
    async def _started() -> Receiver:
        receiver = Receiver()
        await receiver.start()
        return receiver

    @staticmethod
    async def _script(receiver: Receiver, path: str, answers: tuple[int, ...]) -> None:
        receiver.script(path, *answers)


@contextlib.contextmanager
def running_receiver() -> Iterator[ThreadedReceiver]:
    """A receiver on 127.0.0.1 until the block ends."""
    receiver = ThreadedReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
