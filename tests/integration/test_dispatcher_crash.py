"""A dispatcher killed with SIGKILL mid-stream loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.dispatcher_process import DispatcherProcess, dispatcher_environment
from tests.integration.conftest import auth
from tests.integration.test_dispatcher import subscribe
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

DETAILS = json.dumps(
    {
        "claimRef": "C-1",
        "receeveClaimRef": "R-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
)


@pytest.fixture
def dispatcher_env(
    new_database_url: Callable[[str], str],
    tokens: Tokens,
    subscription_server: RunningServer,
    tmp_path: Path,
) -> dict[str, str]:
    return dispatcher_environment(
        database_url=new_database_url("dispatcher"),
        tokens=tokens,
        subscriptions_port=subscription_server.port,
        directory=tmp_path,
        overrides={
            "DISPATCHER_RETRY_SCHEDULE": "0s,0.2s,0.2s,0.2s,0.2s",
            # A short lease, so what the killed process held is claimed again soon.
            "DISPATCHER_LEASE_SECONDS": "5",
            "DISPATCHER_ATTEMPT_TIMEOUT_SECONDS": "2",
        },
    )


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
    await subscribe(stub, tokens.acme, receiver.url("/crash"), "event.claim.*")
    port = await dispatcher_process.start()
    acked: set[str] = set()
    await asyncio.wait_for(
        _publish_until_killed(
            port, tokens.acme_publisher, acked, kill_after=400, kill=dispatcher_process.kill
        ),
        60,
    )
    assert len(acked) >= 400

    await dispatcher_process.start()
    deadline = time.monotonic() + 60

    def delivered() -> set[str]:
        return {json.loads(r.body)["payload"]["messageId"] for r in receiver.requests}

    while not acked <= delivered():
        assert time.monotonic() < deadline, f"{len(acked - delivered())} acked events lost"
        await asyncio.sleep(0.1)
