"""Soak: a steady stream of events for minutes; does the dispatcher stay flat?

A publisher (this process) sends `--rate` events/s over one PublishEvents stream to a
dispatcher process (SQLite by default, or `--postgres URL`), which delivers each to one
subscription: a receiver process answering 200 (`http_post_rate.serve`). Every
`--sample` seconds the dispatcher process is sampled: its resident memory (VmRSS from
/proc/<pid>/status), and from its metrics endpoint the delivery queue's depth
(`webhooks_delivery_queue_depth`, all states) and the age of its oldest due delivery
(`webhooks_delivery_oldest_due_age_seconds`).

The table of samples is followed by a verdict: memory growth between the first and the
last third of the run (MB/min, from the mean RSS and mean time of each third), and the
largest oldest-due age seen; flat means the growth is at most `--max-growth` MB/min and
the age at most `--max-age` s. The raw limit of the same run is measured first: aiohttp
POSTs to the same receiver, 64 in flight; the offered rate is reported as a share of it,
and the achieved rate (deliveries recorded as succeeded per second) against the offered.

Every loop is bounded in count and time; only 127.0.0.1 receives traffic.

    .venv/bin/python bench/soak.py [--minutes 3] [--rate 100] [--sample 5]
                                   [--postgres postgresql+psycopg://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher_rates import AUTH, BATCH, Dispatcher, events, new_setup, raw_post_rate, spawn
from http_post_rate import serve

from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import dispatcher_service_pb2_grpc as pb_grpc

# After the publisher stops, how long the dispatcher may take to empty its queue.
DRAIN_SECONDS = 30.0
RAW_POSTS = 3000


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since publishing started
    rss_mb: float
    depth: int
    oldest_age: float
    succeeded: float
    published: int


@dataclass
class Published:
    sent: int = 0
    accepted: int = 0


# --- the dispatcher process, from the outside ------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def dispatcher_pid() -> int:
    """The `python -m dispatcher_service` child of this process (dispatcher_rates'
    Dispatcher does not expose its process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # The second field (comm) may hold spaces; the parent pid follows its ")".
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"dispatcher_service" in cmdline:
            return int(entry.name)
    raise RuntimeError("no dispatcher_service child process found")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[int, float, float]:
    """Queue depth (all states), oldest due age and deliveries succeeded so far."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        text = await response.text()
    depth, age, succeeded = 0, 0.0, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "webhooks_delivery_queue_depth":
                depth += int(sample.value)
            elif sample.name == "webhooks_delivery_oldest_due_age_seconds":
                age = sample.value
            elif (
                sample.name == "webhooks_deliveries_total"
                and sample.labels.get("outcome") == "succeeded"
            ):
                succeeded = sample.value
    return depth, age, succeeded


# --- publishing at a steady rate -------------------------------------------------------


async def publish_steadily(
    port: int,
    rate: float,
    seconds: float,
    published: Published,
    *,
    details: Callable[[], str] | None = None,
) -> None:
    """`rate` events/s for `seconds` over one stream, in batches sent every 50 ms (a late
    batch catches up, at most BATCH events at a time). `details`, if given, makes each
    batch's details just before it is sent (e.g. to carry the publish time)."""
    # Message ids no earlier run used, so a reused PostgreSQL database takes them all.
    first = time.time_ns() // 1000

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            due = min(int(elapsed * rate) - published.sent, BATCH)
            if due > 0:
                batch = events(first + published.sent, due)
                if details is not None:
                    text = details()
                    for event in batch:
                        event.details = text
                yield pb.PublishEventsRequest(events=batch)
                published.sent += due
            await asyncio.sleep(0.05)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DispatcherServiceStub(channel)
        async for response in stub.PublishEvents(requests(), metadata=AUTH):
            published.accepted += sum(
                r.outcome == pb.PublishResult.OUTCOME_ACCEPTED for r in response.results
            )


async def sample_until(
    done: asyncio.Future[None] | asyncio.Task[None],
    *,
    pid: int,
    metrics_url: str,
    every: float,
    started: float,
    published: Published,
    samples: list[Sample],
) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            depth, age, succeeded = await scrape(session, metrics_url)
            sample = Sample(
                at=time.perf_counter() - started,
                rss_mb=rss_mb(pid),
                depth=depth,
                oldest_age=age,
                succeeded=succeeded,
                published=published.sent,
            )
            samples.append(sample)
            print(
                f"{sample.at:7.1f} {sample.rss_mb:9.1f} {sample.depth:8d} "
                f"{sample.oldest_age:10.2f} {sample.published:10d} {sample.succeeded:10.0f}",
                flush=True,
            )
            if done.done():
                return
            await asyncio.wait({done}, timeout=every)


async def drain(metrics_url: str, accepted: int) -> tuple[float, int, float]:
    """Seconds until the queue is empty and every accepted event has succeeded (or the
    bound), the queue depth then, and deliveries succeeded then."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while True:
            depth, _, succeeded = await scrape(session, metrics_url)
            # The event ready() publishes is delivered too (unless a reused PostgreSQL
            # database holds it already): at least `accepted`.
            finished = depth == 0 and succeeded >= accepted
            elapsed = time.perf_counter() - started
            if finished or elapsed > DRAIN_SECONDS:
                return elapsed, depth, succeeded
            await asyncio.sleep(0.2)


# --- the verdict -----------------------------------------------------------------------


def thirds_growth(samples: list[Sample], seconds: float) -> tuple[float, float, float]:
    """Mean RSS of the first and last third of the run, and the growth between them in
    MB/min (0 when a third has no sample)."""
    first = [s for s in samples if s.at <= seconds / 3]
    last = [s for s in samples if 2 * seconds / 3 <= s.at <= seconds]
    if not first or not last:
        return 0.0, 0.0, 0.0
    first_rss = statistics.fmean(s.rss_mb for s in first)
    last_rss = statistics.fmean(s.rss_mb for s in last)
    span = statistics.fmean(s.at for s in last) - statistics.fmean(s.at for s in first)
    return first_rss, last_rss, (last_rss - first_rss) / span * 60 if span > 0 else 0.0


def report(
    samples: list[Sample],
    args: argparse.Namespace,
    *,
    raw: float,
    published: Published,
    seconds: float,
    drained: tuple[float, int, float],
) -> None:
    during = [s for s in samples if s.at <= seconds + args.sample / 2]
    first_rss, last_rss, growth = thirds_growth(during, seconds)
    slope = 0.0
    if len(during) >= 2:
        slope = statistics.linear_regression(
            [s.at for s in during], [s.rss_mb for s in during]
        ).slope
    max_age = max((s.oldest_age for s in during), default=0.0)
    max_depth = max((s.depth for s in during), default=0)
    offered = published.accepted / seconds
    start = samples[0].succeeded if samples else 0.0
    end = during[-1].succeeded if during else 0.0
    end_at = during[-1].at if during else 0.0
    first_at = samples[0].at if samples else 0.0
    achieved = (end - start) / (end_at - first_at) if end_at > first_at else 0.0
    drain_seconds, drain_depth, drain_succeeded = drained

    database = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"\n{args.minutes:g} min at {args.rate:g} events/s (1 subscription), {database}, "
        f"{os.cpu_count()} cores, {len(samples)} samples"
    )
    print(f"raw aiohttp POST, 64 in flight      {raw:8.0f} req/s")
    print(
        f"offered (accepted / s)             {offered:8.1f} events/s  "
        f"{offered / raw:.2f} of the raw limit; {published.sent} sent, "
        f"{published.accepted} accepted"
    )
    print(
        f"achieved (succeeded / s)           {achieved:8.1f} deliveries/s  "
        f"ratio {achieved / offered if offered else 0.0:.2f} to the offered"
    )
    print(
        f"after publishing: drained in {drain_seconds:.1f} s, queue depth {drain_depth}, "
        f"{drain_succeeded:.0f} succeeded of {published.accepted} accepted "
        "(+1: the readiness probe's event)"
    )
    print(
        f"RSS: first third {first_rss:.1f} MB, last third {last_rss:.1f} MB, growth "
        f"{growth:+.2f} MB/min (least squares over all samples {slope * 60:+.2f} MB/min)"
    )
    print(f"queue: max depth {max_depth}, max oldest-due age {max_age:.2f} s")
    flat_memory = growth <= args.max_growth
    flat_queue = max_age <= args.max_age
    verdict = "FLAT" if flat_memory and flat_queue else "NOT FLAT"
    if seconds < 120:
        verdict += " (a run under 2 min: start-up growth weighs on the first third)"
    print(
        f"verdict: {verdict} (bounds: growth <= {args.max_growth:g} MB/min: "
        f"{'yes' if flat_memory else 'no'}; oldest-due age <= {args.max_age:g} s: "
        f"{'yes' if flat_queue else 'no'})"
    )


async def soak(args: argparse.Namespace, url: str) -> None:
    raw, _ = await raw_post_rate(url, RAW_POSTS)
    print(f"raw aiohttp POST to the receiver: {raw:.0f} req/s", flush=True)
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as directory:
        setup = await new_setup(Path(directory), url)
        metrics_url = ""
        try:
            metrics_port = free_port()
            environment = {
                **setup.environment(deliver=True),
                "DISPATCHER_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
                "DISPATCHER_SHUTDOWN_GRACE_SECONDS": "1",
            }
            if args.postgres:
                environment["DISPATCHER_DATABASE_URL"] = args.postgres
            dispatcher = Dispatcher(environment)
            try:
                port = await dispatcher.port()
                await dispatcher.ready(port)
                pid = dispatcher_pid()
                metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
                published = Published()
                samples: list[Sample] = []
                print(
                    f"{'t (s)':>7} {'RSS (MB)':>9} {'depth':>8} {'oldest (s)':>10} "
                    f"{'published':>10} {'succeeded':>10}",
                    flush=True,
                )
                started = time.perf_counter()
                publisher = asyncio.create_task(
                    publish_steadily(port, args.rate, seconds, published)
                )
                await sample_until(
                    publisher,
                    pid=pid,
                    metrics_url=metrics_url,
                    every=args.sample,
                    started=started,
                    published=published,
                    samples=samples,
                )
                await publisher
                drained = await drain(metrics_url, published.accepted)
            finally:
                dispatcher.stop()
        finally:
            await setup.subscriptions.stop(0)
    report(samples, args, raw=raw, published=published, seconds=seconds, drained=drained)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--postgres", metavar="URL", help="postgresql+psycopg://... instead")
    parser.add_argument("--max-growth", type=float, default=1.0, help="MB/min still flat")
    parser.add_argument("--max-age", type=float, default=5.0, help="oldest-due age still flat")
    args = parser.parse_args()
    receiver, port = spawn(serve)
    try:
        asyncio.run(soak(args, f"http://127.0.0.1:{port}/hook"))
    finally:
        receiver.terminate()
        receiver.join(timeout=10)


if __name__ == "__main__":
    main()
