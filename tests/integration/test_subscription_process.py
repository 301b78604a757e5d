"""`python -m subscription_service` as operators run it: start, serve, stop on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Tokens
from tests.integration.conftest import auth
from webhooks.v1 import subscription_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def _wait_for_port(stream: IO[str], deadline: float) -> int:
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        match = LISTENING.search(line)
        if match:
            return int(match.group(1))
    raise AssertionError("the service did not report its address")


@pytest.fixture
def service_process(tmp_path: Path, tokens: Tokens) -> Iterator[tuple[subprocess.Popen[str], int]]:
    env = {
        **os.environ,
        "SUBSCRIPTIONS_GRPC_ADDR": "127.0.0.1:0",
        "SUBSCRIPTIONS_DATABASE_URL": f"sqlite:///{tmp_path / 'subscriptions.db'}",
        "SUBSCRIPTIONS_AUTH_TOKENS_FILE": str(tokens.file),
        "SUBSCRIPTIONS_SHUTDOWN_GRACE_SECONDS": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "subscription_service"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        port = _wait_for_port(process.stderr, time.monotonic() + 30)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


async def test_service_serves_then_stops_promptly_on_sigterm_with_a_watch_open(
    service_process: tuple[subprocess.Popen[str], int], tokens: Tokens
) -> None:
    process, port = service_process
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = Stub(channel)
        watch = stub.WatchSubscriptions(pb.WatchSubscriptionsRequest(), metadata=auth(tokens.acme))
        first = await watch.read()
        assert isinstance(first, pb.WatchSubscriptionsResponse)
        assert first.change_type == pb.WatchSubscriptionsResponse.CHANGE_TYPE_SNAPSHOT_COMPLETE

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        # The open watch was ended by the shutdown, not waited out.
        assert time.monotonic() - started < 10
        assert await watch.read() is grpc.aio.EOF  # type: ignore[attr-defined]


def test_a_malformed_tokens_file_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text('{"tokens": [{"sha256": "nothex", "tenant": "acme", "scopes": ["read"]}]}')
    result = subprocess.run(
        [sys.executable, "-m", "subscription_service"],
        env={
            **os.environ,
            "SUBSCRIPTIONS_GRPC_ADDR": "127.0.0.1:0",
            "SUBSCRIPTIONS_DATABASE_URL": f"sqlite:///{tmp_path / 'subscriptions.db'}",
            "SUBSCRIPTIONS_AUTH_TOKENS_FILE": str(bad),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "tokens file" in result.stderr
    assert "Traceback" not in result.stderr
