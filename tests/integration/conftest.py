"""Real services on loopback ports, a real HTTP receiver, and ways to call them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from service_common import status_details
from subscription_service.server import RunningServer, create_server
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub

Metadata = tuple[tuple[str, str | bytes], ...]
T = TypeVar("T")


def auth(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


async def routed(dispatcher: RunningDispatcher, tenant: str, message_type: str, count: int) -> None:
    """Waits until the dispatcher's routing table has caught up with the subscriptions."""
    deadline = time.monotonic() + 10
    while len(dispatcher.follower.routes_for(tenant, message_type)) != count:
        assert time.monotonic() < deadline, "the routing table did not catch up"
        await asyncio.sleep(0.02)


async def publish(
    dispatcher_stub: DispatcherStub, token: str, *batches: Sequence[pb.Event]
) -> list[list[pb.PublishResult]]:
    """Publishes `batches` over one PublishEvents stream; the results of each batch."""

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        for batch in batches:
            yield pb.PublishEventsRequest(events=list(batch))

    stream = dispatcher_stub.PublishEvents(requests(), metadata=auth(token))
    return [list(response.results) async for response in stream]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int | None) -> Samples:
    """Every sample a `/metrics` endpoint on loopback serves, by name and labels."""
    assert port is not None, "metrics are served by default"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a sample not served."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(
    check: Callable[[], object], *, within: float = 15, every: float = 0.05
) -> None:
    """Waits until `check()` (awaited when it returns a coroutine) is true."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(every)


async def explore(
    strategy: st.SearchStrategy[T],
    check: Callable[[T], Coroutine[Any, Any, object]],
    *,
    examples: int,
    case_timeout: float,
) -> int:
    """Runs hypothesis over `strategy` in a worker thread while this loop serves the calls
    that `check` makes; derandomized and without an example database, so every run tries
    the same cases. Returns how many cases it ran."""
    loop = asyncio.get_running_loop()
    ran = 0

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )
    @given(strategy)
    def run(case: T) -> None:
        nonlocal ran
        ran += 1
        future = asyncio.run_coroutine_threadsafe(check(case), loop)
        try:
            future.result(timeout=case_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"no answer within {case_timeout} s") from None

    await asyncio.to_thread(run)
    return ran


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations of a failed call, by field."""
    return dict(status_details.field_violations(cast(grpc.Call, error)))


@pytest.fixture
def subscription_settings(database_url: str, tokens: Tokens) -> SubscriptionSettings:
    return SubscriptionSettings(
        grpc_addr="127.0.0.1:0",
        database_url=database_url,
        auth_tokens_file=tokens.file,
        shutdown_grace_seconds=1.0,
    )


@pytest.fixture
async def subscription_server(
    subscription_settings: SubscriptionSettings,
) -> AsyncIterator[RunningServer]:
    running = await create_server(subscription_settings)
    yield running
    await running.stop(0)


@pytest.fixture
async def stub(
    subscription_server: RunningServer,
) -> AsyncIterator[pb_grpc.SubscriptionServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subscription_server.port}") as channel:
        yield pb_grpc.SubscriptionServiceStub(channel)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP receiver on 127.0.0.1 that records what it gets."""
    running = Receiver()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
def dispatcher_settings(
    new_database_url: Callable[[str], str],
    tokens: Tokens,
    subscription_server: RunningServer,
    tmp_path: Path,
) -> DispatcherSettings:
    token_file = tmp_path / "platform-token"
    token_file.write_text(tokens.platform)
    return DispatcherSettings(
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        database_url=new_database_url("dispatcher"),
        auth_tokens_file=tokens.file,
        subscriptions_addr=f"127.0.0.1:{subscription_server.port}",
        subscriptions_token_file=token_file,
        allowed_target_networks="127.0.0.0/8",
        signing_keys_dir=tmp_path / "signing-keys",
        retry_schedule="0s,0.2s,0.2s,0.2s",  # four attempts
        connect_timeout_seconds=1,
        attempt_timeout_seconds=1.5,
        poll_interval_seconds=0.05,
        shutdown_grace_seconds=1,
    )


@pytest.fixture
async def dispatcher(dispatcher_settings: DispatcherSettings) -> AsyncIterator[RunningDispatcher]:
    running = await create_dispatcher(dispatcher_settings)
    await asyncio.wait_for(running.follower.ready.wait(), 10)
    yield running
    await running.stop(1)


@pytest.fixture
async def dispatcher_stub(
    dispatcher: RunningDispatcher,
) -> AsyncIterator[DispatcherStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dispatcher.port}") as channel:
        yield DispatcherStub(channel)
