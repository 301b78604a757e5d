"""A dispatcher killed with SIGKILL mid-stream loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import grpc
import pytest

from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.integration.conftest import auth
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

LISTENING = re.compile(r"dispatcher listening on 127\.0\.0\.1:(\d+)")
DETAILS = json.dumps(
    {
        "claimRef": "C-1",
        "receeveClaimRef": "R-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
)


def _port_of(stream: IO[str], deadline: float) -> int:
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if match := LISTENING.search(line):
            return int(match.group(1))
    raise AssertionError("the dispatcher did not report its address")


class DispatcherProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self.process: subprocess.Popen[str] | None = None
        self._drain: asyncio.Task[None] | None = None

    def start(self) -> int:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher_service"],
            env=self._env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        port = _port_of(self.process.stderr, time.monotonic() + 30)
        stderr = self.process.stderr

        def drain() -> None:
            # Keep reading its log so a full pipe never blocks it; close it at its end.
            for _ in stderr:
                pass
            stderr.close()

        self._drain = asyncio.get_running_loop().create_task(asyncio.to_thread(drain))
        return port

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def drained(self) -> None:
        if self._drain is not None:
            await self._drain

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()  # idempotent: the drain may have closed it


@pytest.fixture
def dispatcher_env(
    new_database_url: Callable[[str], str],
    tokens: Tokens,
    subscription_server: RunningServer,
    tmp_path: Path,
) -> dict[str, str]:
    token_file = tmp_path / "platform-token"
    token_file.write_text(tokens.platform)
    return {
        **os.environ,
        "DISPATCHER_GRPC_ADDR": "127.0.0.1:0",
        "DISPATCHER_DATABASE_URL": new_database_url("dispatcher"),
        "DISPATCHER_AUTH_TOKENS_FILE": str(tokens.file),
        "DISPATCHER_SUBSCRIPTIONS_ADDR": f"127.0.0.1:{subscription_server.port}",
        "DISPATCHER_SUBSCRIPTIONS_TOKEN_FILE": str(token_file),
        "DISPATCHER_ALLOWED_TARGET_NETWORKS": "127.0.0.0/8",
        "DISPATCHER_SIGNING_KEYS_DIR": str(tmp_path / "keys"),
        "DISPATCHER_RETRY_SCHEDULE": "0s,0.2s,0.2s,0.2s,0.2s",
        "DISPATCHER_POLL_INTERVAL_SECONDS": "0.05",
        # A short lease, so what the killed process held is claimed again soon.
        "DISPATCHER_LEASE_SECONDS": "3",
        "DISPATCHER_ATTEMPT_TIMEOUT_SECONDS": "2",
        # INFO: the test reads the port from the "listening on" line.
        "DISPATCHER_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def dispatcher_process(dispatcher_env: dict[str, str]) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess(dispatcher_env)
    yield process
    process.stop()


async def _publish_until_killed(
    port: int, token: str, acked: set[str], *, kill_after: int, kill: Callable[[], None]
) -> None:
    """Streams batches of 20 events, recording each ACCEPTED id, and kills at `kill_after`."""
    counter = iter(range(100_000))

    async def batches() -> AsyncIterator[pb.PublishEventsRequest]:
        for _ in range(500):  # bounded: 10,000 events at most
            yield pb.PublishEventsRequest(
                events=[
                    pb.Event(
                        message_id=f"crash-{next(counter)}",
                        message_type="event.claim.created.v1",
                        details=DETAILS,
                    )
                    for _ in range(20)
                ]
            )

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = DispatcherStub(channel).PublishEvents(batches(), metadata=auth(token))

        async def consume() -> None:
            async for response in stream:
                acked.update(
                    r.message_id
                    for r in response.results
                    if r.outcome == pb.PublishResult.OUTCOME_ACCEPTED
                )
                if len(acked) >= kill_after:
                    kill()

        # The kill ends the stream; anything else is a failure of the test.
        with pytest.raises(grpc.aio.AioRpcError) as broken:
            await consume()
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_every_acknowledged_event_is_delivered_after_a_sigkill(
    stub: Stub,
    receiver: Receiver,
    tokens: Tokens,
    dispatcher_process: DispatcherProcess,
) -> None:
    await stub.CreateSubscription(
        sub_pb.CreateSubscriptionRequest(
            subscription=sub_pb.Subscription(
                url=receiver.url("/crash"), message_types=["event.claim.*"]
            )
        ),
        metadata=auth(tokens.acme),
    )
    port = dispatcher_process.start()
    acked: set[str] = set()
    await asyncio.wait_for(
        _publish_until_killed(
            port, tokens.acme_publisher, acked, kill_after=400, kill=dispatcher_process.kill
        ),
        60,
    )
    assert len(acked) >= 400
    await dispatcher_process.drained()

    dispatcher_process.start()
    deadline = time.monotonic() + 60

    def delivered() -> set[str]:
        return {json.loads(r.body)["payload"]["messageId"] for r in receiver.requests}

    while not acked <= delivered():
        assert time.monotonic() < deadline, f"{len(acked - delivered())} acked events lost"
        await asyncio.sleep(0.1)
