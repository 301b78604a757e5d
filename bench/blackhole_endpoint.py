"""One blackholed endpoint among ten: do the other nine keep their delivery rate?

A receiver process serves eleven ports on 127.0.0.1: ten healthy ones answering 200, and a
blackhole that accepts every connection, reads what it is sent and never answers (on
loopback the practical blackhole: a dropped SYN would need root and a firewall rule).
Each run has ten subscriptions, one per port, and `--events` events each matching all ten:

- baseline: the ten healthy ports;
- blackhole: nine of those healthy ports and the blackhole.

As in `dispatcher_rates.py`, a dispatcher process that only ingests stores the events
first, then a delivering dispatcher process drains them; the figure is the nine healthy
endpoints' deliveries recorded as succeeded per second, from the first success seen to
the last of theirs (or the time cap). The dispatcher runs with its default concurrency
limits (16 per endpoint, 256 overall) and attempt timeout (15 s) unless told otherwise.

SQLite, the default database. Every loop is bounded in count and time (`SECONDS` per
run); only 127.0.0.1 is used.

    .venv/bin/python bench/blackhole_endpoint.py [--events 2000] [--rounds 3]
                                                 [--per-endpoint 16] [--attempt-timeout 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from typing import cast

import grpc
import sqlalchemy as sa
from aiohttp import web
from sqlmodel import col

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher_rates import AUTH, SECONDS, Dispatcher, Setup, new_setup, publish_all, spawn

from dispatcher_service.database import create_engine
from dispatcher_service.models import AttemptRow, DeliveryRow
from webhooks.v1 import subscription_service_pb2 as sub_pb
from webhooks.v1 import subscription_service_pb2_grpc as sub_grpc

ENDPOINTS = 10


# --- the receiver process --------------------------------------------------------------


def serve_endpoints(ports: Queue[list[int]]) -> None:
    """The receiver process: ENDPOINTS healthy ports, then the blackhole's port."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Reads the request and whatever follows until the client gives up; never answers.
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", accept)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for _ in range(ENDPOINTS):
            await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        healthy = [address[1] for address in runner.addresses]
        blackhole = await asyncio.start_server(hold, "127.0.0.1", 0, backlog=1024)
        ports.put([*healthy, blackhole.sockets[0].getsockname()[1]])
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def endpoints() -> Iterator[list[int]]:
    """Runs the receiver process of `serve_endpoints`; yields its ports, healthy ones first."""
    # spawn() is typed for the one port its own servers report; this one reports a list.
    receiver, reported = spawn(serve_endpoints)
    try:
        yield cast("list[int]", reported)
    finally:
        receiver.terminate()
        receiver.join(timeout=10)


# --- one run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    succeeded: int  # the measured endpoints' deliveries recorded as succeeded
    expected: int
    seconds: float
    slowest: int  # succeeded deliveries of the measured endpoint that had the fewest
    blackhole_attempts: int = 0
    blackhole_busy: int = 0  # of those, "endpoint busy" (no slot within the timeout)

    @property
    def rate(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0

    @property
    def capped(self) -> bool:
        return self.succeeded < self.expected


async def subscribe(setup: Setup, url: str, *, tenant: str = "bench") -> str:
    """Subscribes `tenant` to `url`; returns the new subscription's id."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{setup.subscriptions.port}") as channel:
        created = await sub_grpc.SubscriptionServiceStub(channel).CreateSubscription(
            sub_pb.CreateSubscriptionRequest(
                subscription=sub_pb.Subscription(
                    tenant=tenant, url=url, message_types=["event.claim.*"]
                )
            ),
            metadata=AUTH,
        )
    return created.subscription.id


def succeeded_by_url(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(col(DeliveryRow.url), sa.func.count())
            .where(col(DeliveryRow.state) == "succeeded")
            .group_by(col(DeliveryRow.url))
        )
        return {str(row[0]): int(row[1]) for row in rows}


def blackhole_attempts(engine: sa.Engine, url: str) -> tuple[int, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(col(AttemptRow.error))
            .join(DeliveryRow, col(DeliveryRow.id) == col(AttemptRow.delivery_id))
            .where(col(DeliveryRow.url) == url)
        )
        errors = [row[0] for row in rows]
    return len(errors), sum(error.startswith("endpoint busy") for error in errors)


async def drain(setup: Setup, measured: list[str], expected: int) -> tuple[int, float, int]:
    """Succeeded deliveries to `measured`, the seconds from the first success seen to the
    moment they reached `expected` (or the time cap), and the slowest endpoint's count."""
    engine = create_engine(setup.database_url)
    started: float | None = None
    done, slowest = 0, 0
    try:
        deadline = time.perf_counter() + SECONDS
        while time.perf_counter() < deadline:
            counts = await asyncio.to_thread(succeeded_by_url, engine)
            done = sum(counts.get(url, 0) for url in measured)
            slowest = min(counts.get(url, 0) for url in measured)
            if started is None and done:
                started = time.perf_counter()
            if done >= expected:
                break
            await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return done, elapsed, slowest


def tuned(environment: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    return {
        **environment,
        "DISPATCHER_MAX_CONCURRENT_PER_ENDPOINT": str(args.per_endpoint),
        "DISPATCHER_ATTEMPT_TIMEOUT_SECONDS": str(args.attempt_timeout),
        "DISPATCHER_METRICS_ADDR": "127.0.0.1:0",
        "DISPATCHER_SHUTDOWN_GRACE_SECONDS": "1",
    }


async def one_run(
    urls: list[str], blackhole: str | None, total: int, args: argparse.Namespace
) -> Run:
    """Ten subscriptions (`urls`, plus `blackhole` if given); the first nine are measured."""
    measured = urls[: ENDPOINTS - 1]
    targets = [*measured, blackhole] if blackhole else urls[:ENDPOINTS]
    with tempfile.TemporaryDirectory() as directory:
        setup = await new_setup(Path(directory), targets[0])
        try:
            for url in targets[1:]:
                await subscribe(setup, url)
            ingesting = Dispatcher(tuned(setup.environment(deliver=False), args))
            try:
                port = await ingesting.port()
                await ingesting.ready(port)  # its event is delivered too
                await publish_all(port, 0, total)
            finally:
                ingesting.stop()
            expected = len(measured) * (total + 1)
            delivering = Dispatcher(tuned(setup.environment(deliver=True), args))
            try:
                await delivering.port()
                done, seconds, slowest = await drain(setup, measured, expected)
            finally:
                delivering.stop()
            attempts, busy = 0, 0
            if blackhole:
                engine = create_engine(setup.database_url)
                try:
                    attempts, busy = blackhole_attempts(engine, blackhole)
                finally:
                    engine.dispose()
            return Run(done, expected, seconds, slowest, attempts, busy)
        finally:
            await setup.subscriptions.stop(0)


def describe(run: Run) -> str:
    text = f"{run.rate:7.0f} deliveries/s ({run.succeeded} in {run.seconds:.1f} s"
    if run.capped:
        text += f", CAPPED: {run.succeeded} of {run.expected}"
    text += f"; slowest endpoint {run.slowest})"
    return text


async def run(args: argparse.Namespace, ports: list[int]) -> list[tuple[Run, Run]]:
    healthy = [f"http://127.0.0.1:{port}/hook" for port in ports[:ENDPOINTS]]
    blackhole = f"http://127.0.0.1:{ports[ENDPOINTS]}/hook"
    rounds = []
    for number in range(args.rounds):
        baseline = await one_run(healthy, None, args.events, args)
        print(f"round {number + 1}: baseline  {describe(baseline)}", flush=True)
        holed = await one_run(healthy, blackhole, args.events, args)
        print(f"round {number + 1}: blackhole {describe(holed)}", flush=True)
        print(
            f"           blackhole attempts recorded {holed.blackhole_attempts}, of which "
            f"'endpoint busy' {holed.blackhole_busy}; ratio {holed.rate / baseline.rate:.2f}",
            flush=True,
        )
        rounds.append((baseline, holed))
    return rounds


def report(rounds: list[tuple[Run, Run]], args: argparse.Namespace) -> None:
    baseline = statistics.median(b.rate for b, _ in rounds)
    holed = statistics.median(h.rate for _, h in rounds)
    ratio = statistics.median(h.rate / b.rate for b, h in rounds)
    print(
        f"\n{args.events} events x {ENDPOINTS} subscriptions per run, median of {len(rounds)} "
        f"rounds, {os.cpu_count()} cores; {args.per_endpoint} per endpoint, "
        f"attempt timeout {args.attempt_timeout:g} s, cap {SECONDS:g} s per run"
    )
    print(f"9 healthy endpoints, all 10 healthy         {baseline:8.0f} deliveries/s")
    print(f"9 healthy endpoints, 10th a blackhole       {holed:8.0f} deliveries/s")
    print(f"ratio blackhole / baseline                  {ratio:8.2f}   (target 1)")
    if any(h.capped for _, h in rounds):
        print("the blackhole runs hit the time cap before the nine healthy endpoints were done")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events, each to all ten")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-endpoint", type=int, default=16, help="the dispatcher's default")
    parser.add_argument("--attempt-timeout", type=float, default=15.0, help="seconds (default)")
    args = parser.parse_args()
    with endpoints() as ports:
        report(asyncio.run(run(args, ports)), args)


if __name__ == "__main__":
    main()
