"""A million rows in the dispatcher's database: due for a dead endpoint, or old and pruned.

Both parts write their rows straight into the dispatcher's migrated database
(`seed_rows.py`: INSERT ... SELECT over a series, far faster than publishing them), then
start one dispatcher process (`python -m dispatcher_service`, its defaults but for what
local delivery needs) and publish live events for tenant `bench`, whose subscription is
a receiver process's healthy port answering 200 (`blackhole_endpoint.endpoints`).

- backlog: `--backlog` pending deliveries, due now, for tenant `dead`, whose
  subscription is the receiver's blackhole (it accepts connections and never answers).
  Live run: `--events` events published over one stream in batches of 100; the rate is
  the events over the seconds from the first publish to the last success recorded for
  `bench` (polled in the database through its tenant index, so the poll costs the same
  beside a million other rows). Each round has a run without the backlog first; the
  figure is the ratio of the two rates (target >= 0.9). The dispatcher's resident memory
  (VmRSS) is read once it is ready, sampled every 0.1 s during the live run and read at
  its end; the growth judged is the peak minus the start (target <= +50 MB).
- prune: `--backlog` finished events (a delivery that succeeded at its one attempt, all
  created and updated 60 days ago) for `bench`'s subscription, and a dispatcher with
  DISPATCHER_RETENTION_DAYS=30 and DISPATCHER_PRUNE_INTERVAL_SECONDS=1. Events are
  published at `--rate` events/s over one PublishEvents stream (a batch every 50 ms),
  each batch's send-to-answer time being the latency of its events, until the metric
  `webhooks_pruned_rows_total{table="events"}` reaches the seeded count (scraped every
  0.5 s) or `--prune-cap` seconds pass. The pruner starts with the dispatcher, a second
  or two before it takes events: pruning time counts from the dispatcher's start, and
  what was pruned before publishing began is shown. The same is then run on an
  identically seeded database with DISPATCHER_RETENTION_DAYS=0 for as long as that
  window lasted. Target: p99 while pruning < 2x the p99 without.

SQLite, the default database, or with `--postgres URL` a fresh PostgreSQL database
(`bench_backlog_*`) for each run, dropped after it. Medians of `--rounds` rounds. Every
loop is bounded in count and time; only 127.0.0.1 is used. Linux only (/proc).

    .venv/bin/python bench/backlog.py [--backlog 1000000] [--events 5000] [--rounds 3]
        [--rate 200] [--prune-cap 600] [--only backlog|prune]
        [--postgres postgresql+psycopg://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import grpc
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blackhole_endpoint import ENDPOINTS, endpoints, subscribe
from dispatcher_rates import (
    AUTH,
    BATCH,
    SECONDS,
    Dispatcher,
    Setup,
    events,
    fresh_database,
    new_setup,
    publish_all,
)
from seed_rows import Seeded, Subscriber, seed_due, seed_finished
from soak import dispatcher_pid, free_port, rss_mb
from steady_rate import TUNED, percentile

from dispatcher_service.database import create_engine
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import dispatcher_service_pb2_grpc as pb_grpc

MIN_RATIO = 0.9
MAX_GROWTH_MB = 50.0
MAX_P99_RATIO = 2.0
AGE = timedelta(days=60)
RSS_EVERY = 0.1
SCRAPE_EVERY = 0.5
HEALTHY_SUCCEEDED = sa.text(
    "SELECT count(*) FROM deliveries WHERE tenant = 'bench' AND state = 'succeeded'"
)


@dataclass(frozen=True)
class Live:
    rate: float  # events/s to the healthy endpoint
    rss: tuple[float, float, float]  # MB: once ready, at the end, the peak
    seeded: Seeded | None

    @property
    def growth(self) -> float:
        return self.rss[2] - self.rss[0]


@dataclass(frozen=True)
class Ingest:
    latencies_ms: list[float]
    refused: int  # events not accepted
    window: float  # seconds of publishing
    pruned: dict[str, float]  # rows pruned by table, at the end
    pruned_at_start: float  # events pruned when publishing began
    prune_seconds: float | None  # from the dispatcher's start until all were pruned
    seeded: Seeded

    def p(self, share: float) -> float:
        return percentile(self.latencies_ms, share)


# --- the services ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def services(healthy: str, postgres: str | None) -> AsyncIterator[Setup]:
    """The subscription service with `bench` subscribed to `healthy`, and the
    dispatcher's database (a fresh one on PostgreSQL)."""
    with (
        tempfile.TemporaryDirectory() as directory,
        fresh_database(postgres, prefix="bench_backlog_") as database,
    ):
        setup = await new_setup(Path(directory), healthy, database=database)
        try:
            yield setup
        finally:
            await setup.subscriptions.stop(0)


@contextlib.asynccontextmanager
async def dispatching(setup: Setup, settings: dict[str, str]) -> AsyncIterator[int]:
    """A dispatcher process with its defaults but for `settings`, ready; yields its port."""
    environment = setup.environment(deliver=True)
    for name in TUNED:
        environment.pop(name)
    environment["DISPATCHER_SHUTDOWN_GRACE_SECONDS"] = "1"
    dispatcher = Dispatcher({**environment, **settings})
    try:
        port = await dispatcher.port()
        await dispatcher.ready(port)  # its event is delivered too
        yield port
    finally:
        dispatcher.stop()


# --- part 1: a dead endpoint's backlog -------------------------------------------------


def healthy_succeeded(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(HEALTHY_SUCCEEDED).scalar_one())


async def wait_healthy(database_url: str, total: int, since: float) -> float:
    """Seconds from `since` until `total` deliveries of `bench` succeeded."""
    engine = create_engine(database_url)
    done = 0
    try:
        deadline = time.perf_counter() + SECONDS
        while time.perf_counter() < deadline:
            done = await asyncio.to_thread(healthy_succeeded, engine)
            if done >= total:
                return time.perf_counter() - since
            await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    raise RuntimeError(f"only {done} of {total} delivered in {SECONDS:g} s")


async def peak_rss(pid: int, done: asyncio.Event) -> float:
    peak = rss_mb(pid)
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), RSS_EVERY)
        peak = max(peak, rss_mb(pid))
    return peak


async def live_run(urls: tuple[str, str], backlog: int, args: argparse.Namespace) -> Live:
    healthy, blackhole = urls
    async with services(healthy, args.postgres) as setup:
        dead = await subscribe(setup, blackhole, tenant="dead")
        seeded = None
        if backlog:
            to, now = Subscriber("dead", dead, blackhole), datetime.now(UTC)
            seeded = await asyncio.to_thread(seed_due, setup.database_url, backlog, to, now=now)
        async with dispatching(setup, {}) as port:
            pid = dispatcher_pid()
            start, done = rss_mb(pid), asyncio.Event()
            peak = asyncio.create_task(peak_rss(pid, done))
            try:
                started = time.perf_counter()
                await publish_all(port, 0, args.events)
                seconds = await wait_healthy(setup.database_url, args.events + 1, started)
            finally:
                done.set()
            end = rss_mb(pid)
            return Live(args.events / seconds, (start, end, max(await peak, end)), seeded)


# --- part 2: pruning beside ingestion --------------------------------------------------


async def publish_timed(
    port: int, rate: float, stop: asyncio.Event, cap: float, latencies: list[float]
) -> tuple[float, int]:
    """`rate` events/s over one stream, a batch every 50 ms, until `stop` is set or `cap`
    seconds passed; adds each accepted event's latency (ms, from its batch's sending to
    its answer) to `latencies`. Returns the seconds published and the events refused."""
    first = time.time_ns() // 1000  # message ids no earlier run used
    sent_at: collections.deque[tuple[float, int]] = collections.deque()
    started = time.perf_counter()

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        sent = 0
        while not stop.is_set() and (elapsed := time.perf_counter() - started) < cap:
            due = min(int(elapsed * rate) - sent, BATCH)
            if due > 0:
                sent_at.append((time.perf_counter(), due))
                yield pb.PublishEventsRequest(events=events(first + sent, due))
                sent += due
            await asyncio.sleep(0.05)

    refused = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DispatcherServiceStub(channel)
        async for response in stub.PublishEvents(requests(), metadata=AUTH):
            answered = time.perf_counter()
            sent, count = sent_at.popleft()
            ok = sum(r.outcome == pb.PublishResult.OUTCOME_ACCEPTED for r in response.results)
            latencies.extend([(answered - sent) * 1000] * ok)
            refused += count - ok
    return time.perf_counter() - started, refused


async def pruned_rows(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """`webhooks_pruned_rows_total` by table, from the metrics endpoint at `url`."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        text = await response.text()
    return {
        sample.labels.get("table", ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "webhooks_pruned_rows_total"
    }


async def watch(
    scrape: Callable[[], Awaitable[dict[str, float]]],
    publisher: asyncio.Task[tuple[float, int]],
    stop: asyncio.Event,
    target: float,
) -> tuple[dict[str, float], float | None]:
    """Scrapes the pruned rows while `publisher` runs; once `target` events are pruned,
    notes the time and has the publisher stop. Returns the last figures and that time."""
    done_at = None
    while True:
        pruned = await scrape()
        if done_at is None and pruned.get("events", 0.0) >= target:
            done_at = time.perf_counter()
            stop.set()
        if publisher.done():
            return pruned, done_at
        await asyncio.wait({publisher}, timeout=SCRAPE_EVERY)


async def ingest_run(
    healthy: str, args: argparse.Namespace, *, retention: float, cap: float
) -> Ingest:
    """Seeds the finished events, then publishes until they are all pruned or `cap`
    seconds have passed."""
    async with services(healthy, args.postgres) as setup:
        to, at = Subscriber("bench", setup.subscription_id, healthy), datetime.now(UTC) - AGE
        seeded = await asyncio.to_thread(seed_finished, setup.database_url, args.backlog, to, at=at)
        metrics_port, spawned = free_port(), time.perf_counter()
        settings = {
            "DISPATCHER_RETENTION_DAYS": f"{retention:g}",
            "DISPATCHER_PRUNE_INTERVAL_SECONDS": "1",
            "DISPATCHER_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        }
        async with (
            dispatching(setup, settings) as port,
            aiohttp.ClientSession() as session,
        ):
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            at_start = (await pruned_rows(session, url)).get("events", 0.0)
            stop, latencies = asyncio.Event(), list[float]()
            publisher = asyncio.create_task(publish_timed(port, args.rate, stop, cap, latencies))
            scrape = functools.partial(pruned_rows, session, url)
            pruned, done_at = await watch(scrape, publisher, stop, seeded.rows)
            window, refused = await publisher
    prune_seconds = None if done_at is None else done_at - spawned
    return Ingest(latencies, refused, window, pruned, at_start, prune_seconds, seeded)


# --- the rounds and the report ---------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


async def backlog_rounds(urls: tuple[str, str], args: argparse.Namespace) -> None:
    print(
        f"{'round':>5} {'seeded in':>9} {'alone ev/s':>10} {'backlog ev/s':>12} {'ratio':>6} "
        f"{'RSS start':>9} {'end':>7} {'peak':>7} {'growth':>7}",
        flush=True,
    )
    rounds = []
    for number in range(1, args.rounds + 1):
        alone = await live_run(urls, 0, args)
        loaded = await live_run(urls, args.backlog, args)
        seeded = loaded.seeded.seconds if loaded.seeded else 0.0
        start, end, peak = loaded.rss
        print(
            f"{number:5d} {seeded:7.1f} s {alone.rate:10.0f} {loaded.rate:12.0f} "
            f"{loaded.rate / alone.rate:6.2f} {start:7.1f}MB {end:7.1f} {peak:7.1f} "
            f"{loaded.growth:+7.1f}",
            flush=True,
        )
        rounds.append((alone, loaded))
    ratio = statistics.median(loaded.rate / alone.rate for alone, loaded in rounds)
    growth = statistics.median(loaded.growth for _, loaded in rounds)
    worst = max(loaded.growth for _, loaded in rounds)
    print(f"median of {len(rounds)} rounds:")
    print(
        f"  healthy endpoint's rate with the backlog / alone  {ratio:6.2f}   "
        f"(target >= {MIN_RATIO:g}: {verdict(ratio >= MIN_RATIO)})"
    )
    print(
        f"  dispatcher RSS growth, peak - start            {growth:+6.1f} MB (worst round "
        f"{worst:+.1f}; target <= +{MAX_GROWTH_MB:g} MB: {verdict(growth <= MAX_GROWTH_MB)})"
    )


def latency(run: Ingest) -> str:
    return f"{run.p(0.5):6.1f} {run.p(0.99):6.1f}"


async def prune_rounds(healthy: str, args: argparse.Namespace) -> None:
    print(
        f"{'round':>5} {'seeded in':>9} {'pruned in':>9} {'events/s':>8} {'rows/s':>7} "
        f"{'window':>7} {'p50':>6} {'p99':>6} {'p50 no':>6} {'p99 no':>6} {'ratio':>6} "
        f"{'refused':>7}",
        flush=True,
    )
    rounds = []
    for number in range(1, args.rounds + 1):
        pruning = await ingest_run(healthy, args, retention=30, cap=args.prune_cap)
        without = await ingest_run(healthy, args, retention=0, cap=pruning.window)
        seconds = pruning.prune_seconds or float("nan")
        took = "CAPPED" if pruning.prune_seconds is None else f"{seconds:.1f} s"
        rows = sum(pruning.pruned.values())
        print(
            f"{number:5d} {pruning.seeded.seconds:7.1f} s {took:>9} "
            f"{pruning.seeded.rows / seconds:8.0f} {rows / seconds:7.0f} "
            f"{pruning.window:6.1f}s {latency(pruning)} {latency(without)} "
            f"{pruning.p(0.99) / without.p(0.99):6.2f} {pruning.refused + without.refused:7d}",
            flush=True,
        )
        print(
            f"      events pruned: {pruning.pruned_at_start:.0f} before publishing began, "
            f"{pruning.pruned.get('events', 0.0):.0f} of {pruning.seeded.rows} at its end"
        )
        rounds.append((pruning, without))
    prune_report(rounds, args)


def prune_report(rounds: list[tuple[Ingest, Ingest]], args: argparse.Namespace) -> None:
    ratio = statistics.median(p.p(0.99) / w.p(0.99) for p, w in rounds)
    done = [p for p, _ in rounds if p.prune_seconds is not None]
    print(f"median of {len(rounds)} rounds:")
    print(
        f"  ingestion p99 while pruning / without          {ratio:6.2f}   "
        f"(target < {MAX_P99_RATIO:g}: {verdict(ratio < MAX_P99_RATIO)})"
    )
    if done:
        seconds = statistics.median(p.prune_seconds or 0.0 for p in done)
        rows = statistics.median(sum(p.pruned.values()) for p in done)
        print(
            f"  pruning {args.backlog} events, {rows:.0f} rows of the three tables: "
            f"{seconds:.1f} s, {args.backlog / seconds:.0f} events/s, "
            f"{rows / seconds:.0f} rows/s"
        )
    if len(done) < len(rounds):
        print(
            f"  {len(rounds) - len(done)} of {len(rounds)} rounds hit the cap of "
            f"{args.prune_cap:g} s before pruning was done: their p99 covers only part of it"
        )


async def run(args: argparse.Namespace, ports: list[int]) -> None:
    healthy = f"http://127.0.0.1:{ports[0]}/hook"
    blackhole = f"http://127.0.0.1:{ports[ENDPOINTS]}/hook"
    database = "PostgreSQL" if args.postgres else "SQLite"
    if args.only in (None, "backlog"):
        print(
            f"\n{database}: {args.events} live events beside {args.backlog} due deliveries "
            f"for a dead endpoint, {os.cpu_count()} cores",
            flush=True,
        )
        await backlog_rounds((healthy, blackhole), args)
    if args.only in (None, "prune"):
        print(
            f"\n{database}: ingestion at {args.rate:g} events/s while {args.backlog} finished "
            f"events are pruned (cap {args.prune_cap:g} s), {os.cpu_count()} cores; "
            "latencies in ms, 'no': the same without pruning",
            flush=True,
        )
        await prune_rounds(healthy, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=1_000_000, help="rows seeded per run")
    parser.add_argument("--events", type=int, default=5000, help="live events, backlog part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s, prune part")
    parser.add_argument("--prune-cap", type=float, default=600.0, help="seconds, prune part")
    parser.add_argument("--only", choices=("backlog", "prune"))
    parser.add_argument("--postgres", metavar="URL", help="a server to make fresh databases on")
    args = parser.parse_args()
    with endpoints() as ports:
        asyncio.run(run(args, ports))


if __name__ == "__main__":
    main()
