"""Dispatcher throughput next to the raw limits measured in the same run.

- ingest: events acknowledged per second over one PublishEvents stream (batches of 100,
  SQLite, one matching subscription, so each event also writes a delivery row), next to a
  raw grpc.aio bidirectional stream echoing one small message per request.
- delivery: events published and delivered (signed ECDSA POSTs answered 200 by a receiver
  in another process) per second, next to raw aiohttp POSTs to the same receiver.

Every loop is bounded in count and time; only 127.0.0.1 is used.
Run: .venv/bin/python bench/dispatcher_rates.py [--events 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from http_post_rate import aiohttp_client, drive, serve

from dispatcher_service.server import RunningDispatcher, create_server
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.store import DeliveryStore
from service_common.auth import hash_token
from subscription_service.server import create_server as create_subscriptions
from subscription_service.settings import SubscriptionSettings
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import dispatcher_service_pb2_grpc as pb_grpc
from webhooks.v1 import subscription_service_pb2 as sub_pb
from webhooks.v1 import subscription_service_pb2_grpc as sub_grpc

TOKEN = "bench-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
DETAILS = json.dumps(
    {
        "claimRef": "C-1",
        "receeveClaimRef": "R-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
)
SECONDS = 60.0


async def raw_echo_rate(messages: int) -> float:
    """One small message per request over one grpc.aio bidirectional stream."""

    async def echo(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.stream_stream_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    payload = b"x" * 200
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/bench.Echo/Echo")()  # type: ignore[call-arg]
        started = time.perf_counter()
        done = 0
        for _ in range(messages):
            await call.write(payload)
            await call.read()
            done += 1
            if time.perf_counter() - started > SECONDS:
                break
        await call.done_writing()
        elapsed = time.perf_counter() - started
    await server.stop(0)
    return done / elapsed


def events(start: int, count: int) -> list[pb.Event]:
    return [
        pb.Event(
            tenant="bench",
            message_id=f"b-{i}",
            message_type="event.claim.created.v1",
            details=DETAILS,
        )
        for i in range(start, start + count)
    ]


async def publish_all(port: int, total: int, batch: int) -> float:
    """Seconds to publish `total` events over one stream; every one must be ACCEPTED."""

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        for start in range(0, total, batch):
            yield pb.PublishEventsRequest(events=events(start, min(batch, total - start)))

    accepted = 0
    last: object = None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DispatcherServiceStub(channel)
        started = time.perf_counter()
        async for response in stub.PublishEvents(requests(), metadata=AUTH):
            last = response.results[-1]
            accepted += sum(
                r.outcome == pb.PublishResult.OUTCOME_ACCEPTED for r in response.results
            )
        elapsed = time.perf_counter() - started
    assert accepted == total, f"only {accepted} of {total} accepted: {last}"
    return elapsed


async def services(directory: Path, url: str) -> tuple[object, RunningDispatcher]:
    tokens = directory / "tokens.json"
    tokens.write_text(
        json.dumps({"tokens": [{"sha256": hash_token(TOKEN), "tenant": "*", "scopes": ["admin"]}]})
    )
    (directory / "platform-token").write_text(TOKEN)
    subscriptions = await create_subscriptions(
        SubscriptionSettings(
            grpc_addr="127.0.0.1:0",
            database_url=f"sqlite:///{directory / 'subscriptions.db'}",
            auth_tokens_file=tokens,
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subscriptions.port}") as channel:
        await sub_grpc.SubscriptionServiceStub(channel).CreateSubscription(
            sub_pb.CreateSubscriptionRequest(
                subscription=sub_pb.Subscription(
                    tenant="bench", url=url, message_types=["event.claim.*"]
                )
            ),
            metadata=AUTH,
        )
    dispatcher = await create_server(
        DispatcherSettings(
            grpc_addr="127.0.0.1:0",
            database_url=f"sqlite:///{directory / 'dispatcher.db'}",
            auth_tokens_file=tokens,
            subscriptions_addr=f"127.0.0.1:{subscriptions.port}",
            subscriptions_token_file=directory / "platform-token",
            allowed_target_networks="127.0.0.0/8",
            signing_keys_dir=directory / "keys",
            poll_interval_seconds=0.05,
            # The same number of requests in flight as the raw client below.
            max_concurrent_per_endpoint=64,
        )
    )
    await asyncio.wait_for(dispatcher.follower.ready.wait(), 10)
    return subscriptions, dispatcher


async def ingest_rate(url: str, total: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        subscriptions, dispatcher = await services(Path(directory), url)
        # Only ingestion is measured: the worker stops claiming.
        await dispatcher.worker.stop(0)
        elapsed = await publish_all(dispatcher.port, total, batch=100)
        await dispatcher.stop(0)
        await subscriptions.stop(0)  # type: ignore[attr-defined]
    return total / elapsed


async def delivery_rate(url: str, total: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        subscriptions, dispatcher = await services(Path(directory), url)
        store = DeliveryStore(dispatcher.engine)
        started = time.perf_counter()
        await publish_all(dispatcher.port, total, batch=100)
        while True:
            counts = await asyncio.to_thread(store.counts_by_state)
            succeeded = sum(n for state, n in counts.items() if state.value == "succeeded")
            if succeeded >= total or time.perf_counter() - started > SECONDS:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        await dispatcher.stop(0)
        await subscriptions.stop(0)  # type: ignore[attr-defined]
    return succeeded / elapsed


async def raw_post_rate(url: str, total: int) -> float:
    post, close = await aiohttp_client(url, 64)
    run = await drive(post, requests=total, concurrency=64, seconds=SECONDS)
    await close()
    return run.rate


async def bench(args: argparse.Namespace, url: str) -> None:
    echo = await raw_echo_rate(args.events)
    ingest = await ingest_rate(url, args.events)
    print(f"raw gRPC stream echo, 1 message/request: {echo:9.0f} msg/s")
    print(
        f"ingest, batches of 100 (SQLite):        {ingest:9.0f} events/s  ratio {ingest / echo:.2f}"
    )
    raw = await raw_post_rate(url, args.events)
    delivered = await delivery_rate(url, args.events)
    print(f"raw aiohttp POST, 64 in flight:          {raw:9.0f} req/s")
    ratio = delivered / raw
    print(f"published + signed + delivered:          {delivered:9.0f} events/s  ratio {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    receiver = multiprocessing.Process(target=serve, args=(ports,), daemon=True)
    receiver.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}/hook"
        asyncio.run(bench(args, url))
    finally:
        receiver.terminate()
        receiver.join(5)


if __name__ == "__main__":
    main()
