"""Dispatcher throughput next to the raw limits measured in the same run.

Every server runs in a process of its own, as in production, and the client in this one:

- raw gRPC: a grpc.aio server process echoing one small message per request over one
  bidirectional stream, measured two ways: each message answered before the next is
  sent (as a publisher waiting for each ack), and pipelined (the stream's throughput);
- ingest: events acknowledged per second over one PublishEvents stream in batches of 100,
  by a dispatcher process that only ingests (`DISPATCHER_DELIVER=false`); each event
  matches one subscription, so each also writes a delivery row;
- raw POST: aiohttp POSTs, 64 in flight, to a receiver process answering 200;
- delivery: a dispatcher process drains the backlog ingested above: claims, signs
  (ECDSA P-256), POSTs to the same receiver and records every attempt; also the CPU time
  that process spends per delivery next to the raw client's per POST (Linux);
- end to end: events published and delivered by one dispatcher process, from the first
  publish to the last recorded success.

SQLite, the default database, or with `--postgres URL` a fresh PostgreSQL database on
that server for each round (dropped after it). The raw pycurl rate (libcurl's multi
interface alone, 64 in flight, on a thread) is the limit of the dispatcher's own HTTP
library. Every loop is bounded in count and time; only 127.0.0.1 is used.

    .venv/bin/python bench/dispatcher_rates.py [--events 10000] [--rounds 3]
        [--postgres postgresql+psycopg://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import grpc
import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from http_post_rate import aiohttp_client, drive, raw_pycurl, serve

from dispatcher_service.database import create_engine
from dispatcher_service.domain import DeliveryState
from dispatcher_service.store import DeliveryStore
from service_common.auth import hash_token
from subscription_service.server import RunningServer
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
BATCH = 100
SECONDS = 60.0
LISTENING = re.compile(r"dispatcher listening on 127\.0\.0\.1:(\d+)")


# --- raw limits ------------------------------------------------------------------------


def echo_server(ports: Queue[int]) -> None:
    """The raw gRPC server process: echoes every message of a bidirectional stream."""

    async def echo(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.stream_stream_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


async def raw_echo_rate(port: int, messages: int) -> float:
    """One small message per request, each answered before the next is sent."""
    payload = b"x" * 200
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/bench.Echo/Echo")()  # type: ignore[call-arg]
        for _ in range(100):  # warm-up
            await call.write(payload)
            await call.read()
        started = time.perf_counter()
        done = 0
        while done < messages and time.perf_counter() - started < SECONDS:
            await call.write(payload)
            await call.read()
            done += 1
        elapsed = time.perf_counter() - started
        await call.done_writing()
    return done / elapsed


async def raw_stream_rate(port: int, messages: int) -> float:
    """One small message per request, written as fast as the stream takes them while the
    echoes are read: the raw throughput of one stream."""
    payload = b"x" * 200

    async def requests() -> AsyncIterator[bytes]:
        for _ in range(messages):
            yield payload

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/bench.Echo/Echo")(requests())  # type: ignore[call-arg]
        started = time.perf_counter()
        done = 0
        async for _ in call:
            done += 1
            if time.perf_counter() - started > SECONDS:
                call.cancel()
                break
        elapsed = time.perf_counter() - started
    return done / elapsed


async def raw_post_rate(url: str, total: int) -> tuple[float, float]:
    """POSTs per second, and CPU seconds of this process per POST."""
    post, close = await aiohttp_client(url, 64)
    await drive(post, requests=500, concurrency=64, seconds=SECONDS)  # warm-up
    cpu, started = time.process_time(), time.perf_counter()
    run = await drive(post, requests=total, concurrency=64, seconds=SECONDS)
    cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
    await close()
    return run.rate, cpu / (run.rate * elapsed)


# --- the services ----------------------------------------------------------------------


def events(start: int, count: int, *, tenant: str = "bench") -> list[pb.Event]:
    return [
        pb.Event(
            tenant=tenant,
            message_id=f"b-{i}",
            message_type="event.claim.created.v1",
            details=DETAILS,
        )
        for i in range(start, start + count)
    ]


async def publish_all(port: int, first: int, total: int, *, tenant: str = "bench") -> float:
    """Seconds to publish `total` events of `tenant` over one stream; every one must be
    ACCEPTED."""

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        for start in range(first, first + total, BATCH):
            count = min(BATCH, first + total - start)
            yield pb.PublishEventsRequest(events=events(start, count, tenant=tenant))

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


@dataclass
class Setup:
    directory: Path
    subscriptions: RunningServer
    url: str
    # The dispatcher's database: SQLite in `directory` unless given.
    database: str | None = None
    # The id of the subscription of tenant `bench` to `url`.
    subscription_id: str = ""

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.directory / 'dispatcher.db'}"

    def environment(self, *, deliver: bool) -> dict[str, str]:
        return {
            **os.environ,
            "DISPATCHER_GRPC_ADDR": "127.0.0.1:0",
            "DISPATCHER_HTTP_ADDR": "127.0.0.1:0",
            "DISPATCHER_METRICS_ADDR": "127.0.0.1:0",
            "DISPATCHER_DATABASE_URL": self.database_url,
            "DISPATCHER_AUTH_TOKENS_FILE": str(self.directory / "tokens.json"),
            "DISPATCHER_SUBSCRIPTIONS_ADDR": f"127.0.0.1:{self.subscriptions.port}",
            "DISPATCHER_SUBSCRIPTIONS_TOKEN_FILE": str(self.directory / "platform-token"),
            "DISPATCHER_ALLOWED_TARGET_NETWORKS": "127.0.0.0/8",
            "DISPATCHER_SIGNING_KEYS_DIR": str(self.directory / "keys"),
            "DISPATCHER_POLL_INTERVAL_SECONDS": "0.05",
            # The same number of requests in flight as the raw client.
            "DISPATCHER_MAX_CONCURRENT_PER_ENDPOINT": "64",
            "DISPATCHER_DELIVER": "true" if deliver else "false",
            "DISPATCHER_LOG_LEVEL": "WARNING",
        }


async def new_setup(directory: Path, url: str, *, database: str | None = None) -> Setup:
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
            metrics_addr="127.0.0.1:0",
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subscriptions.port}") as channel:
        created = await sub_grpc.SubscriptionServiceStub(channel).CreateSubscription(
            sub_pb.CreateSubscriptionRequest(
                subscription=sub_pb.Subscription(
                    tenant="bench", url=url, message_types=["event.claim.*"]
                )
            ),
            metadata=AUTH,
        )
    return Setup(
        directory=directory,
        subscriptions=subscriptions,
        url=url,
        database=database,
        subscription_id=created.subscription.id,
    )


@contextlib.contextmanager
def fresh_database(
    server_url: str | None, *, prefix: str = "webhooks_bench_"
) -> Iterator[str | None]:
    """A new, empty PostgreSQL database on the server of `server_url`, named `prefix` and
    a random suffix, dropped afterwards (None: SQLite, nothing to make)."""
    if server_url is None:
        yield None
        return
    url = make_url(server_url)
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class Dispatcher:
    """`python -m dispatcher_service` in a process of its own."""

    def __init__(self, environment: dict[str, str]) -> None:
        # INFO for the one line that names the port; the rest of its log is dropped.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher_service"],
            env={**environment, "DISPATCHER_LOG_LEVEL": "INFO"},
            stderr=subprocess.PIPE,
            text=True,
        )

    async def port(self) -> int:
        stderr = self._process.stderr
        assert stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(stderr.readline)
            if not line:
                break
            if match := LISTENING.search(line):
                asyncio.get_running_loop().run_in_executor(None, stderr.read)
                return int(match.group(1))
        raise RuntimeError("the dispatcher did not start")

    async def ready(self, port: int) -> None:
        """Waits until it accepts events (its routing table has loaded)."""
        deadline = time.monotonic() + 60
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DispatcherServiceStub(channel)
            while time.monotonic() < deadline:
                request = pb.PublishEventRequest(event=events(-1, 1)[0])
                try:
                    await stub.PublishEvent(request, metadata=AUTH, timeout=5)
                    return
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                await asyncio.sleep(0.1)
        raise RuntimeError("the dispatcher did not become ready")

    def cpu_seconds(self) -> float | None:
        """CPU time the process has used so far (Linux: /proc), or None."""
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)


async def wait_delivered(setup: Setup, total: int, *, since: float | None) -> float:
    """Seconds from `since` (or the first success seen) until `total` deliveries succeeded."""
    engine = create_engine(setup.database_url)
    store = DeliveryStore(engine)
    started = since
    try:
        deadline = time.perf_counter() + SECONDS
        while time.perf_counter() < deadline:
            counts = await asyncio.to_thread(store.counts_by_state)
            succeeded = counts.get(DeliveryState.SUCCEEDED, 0)
            if started is None and succeeded:
                started = time.perf_counter()
            if succeeded >= total:
                assert started is not None
                return time.perf_counter() - started
            await asyncio.sleep(0.01)
    finally:
        engine.dispose()
    raise RuntimeError(f"only {succeeded} of {total} delivered in {SECONDS}s")


@dataclass
class Round:
    echo: float
    stream: float
    ingest: float
    raw_post: float
    delivery: float
    end_to_end: float
    # CPU seconds: of the raw client per POST, of the delivering dispatcher per delivery
    # (None where /proc is not there). Steadier than rates on a shared machine.
    raw_post_cpu: float
    delivery_cpu: float | None
    # libcurl's multi interface alone, the dispatcher's sender's library: POSTs per second.
    raw_curl: float


async def one_round(echo_port: int, url: str, total: int, postgres: str | None) -> Round:
    echo = await raw_echo_rate(echo_port, total)
    stream = await raw_stream_rate(echo_port, total)
    raw_post, raw_post_cpu = await raw_post_rate(url, total)
    flat_out = argparse.Namespace(requests=total, concurrency=64, seconds=SECONDS)
    raw_curl = (await asyncio.to_thread(raw_pycurl, url, flat_out)).rate
    with tempfile.TemporaryDirectory() as directory, fresh_database(postgres) as database:
        setup = await new_setup(Path(directory), url, database=database)
        try:
            # Ingest only, then let a delivering dispatcher drain what was ingested.
            ingesting = Dispatcher(setup.environment(deliver=False))
            port = await ingesting.port()
            await ingesting.ready(port)
            ingest = total / await publish_all(port, 0, total)
            ingesting.stop()
            delivering = Dispatcher(setup.environment(deliver=True))
            await delivering.port()
            cpu_before = delivering.cpu_seconds()
            # The event sent by ready() is delivered too.
            delivery = total / await wait_delivered(setup, total + 1, since=None)
            cpu_after = delivering.cpu_seconds()
            delivery_cpu = (
                None
                if cpu_before is None or cpu_after is None
                else (cpu_after - cpu_before) / (total + 1)
            )
            # End to end: publish more and wait for every one of them.
            delivering.stop()
            both = Dispatcher(setup.environment(deliver=True))
            port = await both.port()
            await both.ready(port)
            started = time.perf_counter()
            await publish_all(port, total, total)
            end_to_end = total / await wait_delivered(setup, 2 * total + 1, since=started)
            both.stop()
        finally:
            await setup.subscriptions.stop(0)
    return Round(
        echo, stream, ingest, raw_post, delivery, end_to_end, raw_post_cpu, delivery_cpu, raw_curl
    )


def spawn(target: Callable[[Queue[Any]], None]) -> tuple[multiprocessing.process.BaseProcess, int]:
    context = multiprocessing.get_context("spawn")
    ports: Queue[Any] = context.Queue()
    process = context.Process(target=target, args=(ports,), daemon=True)
    process.start()
    return process, ports.get(timeout=60)


def report(rounds: list[Round], total: int) -> None:
    def median(pick: Callable[[Round], float]) -> float:
        return statistics.median(pick(r) for r in rounds)

    echo, ingest = median(lambda r: r.echo), median(lambda r: r.ingest)
    raw, delivery = median(lambda r: r.raw_post), median(lambda r: r.delivery)
    both = median(lambda r: r.end_to_end)
    print(f"\n{total} events per run, median of {len(rounds)} rounds, {os.cpu_count()} cores")
    stream = median(lambda r: r.stream)
    print("raw gRPC stream, 1 message/request, each answered before the next")
    print(f"                                         {echo:8.0f} msg/s")
    print("raw gRPC stream, 1 message/request, pipelined")
    print(f"                                         {stream:8.0f} msg/s")
    print(f"ingest, batches of {BATCH}                   {ingest:8.0f} events/s  ", end="")
    print(f"ratio {median(lambda r: r.ingest / r.echo):.2f} to the first, ", end="")
    print(f"{median(lambda r: r.ingest / r.stream):.2f} to the second (target 3)")
    print(f"raw aiohttp POST, 64 in flight           {raw:8.0f} req/s")
    print(f"raw pycurl POST, 64 in flight            {median(lambda r: r.raw_curl):8.0f} req/s")
    print(f"delivery (claim, sign, POST, record)     {delivery:8.0f} events/s  ", end="")
    print(
        f"ratio {median(lambda r: r.delivery / r.raw_post):.2f} to raw aiohttp (target 1.5), ",
        end="",
    )
    print(f"{median(lambda r: r.delivery / r.raw_curl):.2f} to raw pycurl (target 0.5)")
    print(f"end to end (publish to recorded success) {both:8.0f} events/s  ", end="")
    print(f"ratio {median(lambda r: r.end_to_end / r.raw_post):.2f} to raw aiohttp (target 1.2)")
    measured = [r for r in rounds if r.delivery_cpu is not None]
    if measured:
        ours = statistics.median(r.delivery_cpu or 0.0 for r in measured)
        raw_cpu = statistics.median(r.raw_post_cpu for r in measured)
        print(f"CPU per delivery, dispatcher process     {ours * 1e6:8.0f} us  ", end="")
        print(f"raw client per POST {raw_cpu * 1e6:.0f} us: ratio {raw_cpu / ours:.2f}")


async def run(args: argparse.Namespace, echo_port: int, url: str) -> list[Round]:
    rounds = []
    for number in range(args.rounds):
        result = await one_round(echo_port, url, args.events, args.postgres)
        print(
            f"round {number + 1}: echo {result.echo:.0f}/s stream {result.stream:.0f}/s "
            f"ingest {result.ingest:.0f}/s "
            f"raw POST {result.raw_post:.0f}/s raw pycurl {result.raw_curl:.0f}/s "
            f"delivery {result.delivery:.0f}/s "
            f"end to end {result.end_to_end:.0f}/s"
            + (
                ""
                if result.delivery_cpu is None
                else f"; CPU per delivery {result.delivery_cpu * 1e6:.0f} us, "
                f"per raw POST {result.raw_post_cpu * 1e6:.0f} us"
            ),
            flush=True,
        )
        rounds.append(result)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres", metavar="URL", help="a server to make a fresh database on for each round"
    )
    args = parser.parse_args()
    receiver, receiver_port = spawn(serve)
    echo, echo_port = spawn(echo_server)
    try:
        url = f"http://127.0.0.1:{receiver_port}/hook"
        report(asyncio.run(run(args, echo_port, url)), args.events)
    finally:
        for process in (receiver, echo):
            process.terminate()
            process.join(timeout=10)


if __name__ == "__main__":
    main()
