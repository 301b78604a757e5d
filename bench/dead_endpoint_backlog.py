"""A dead endpoint's backlog of due deliveries: does live traffic to the others keep its rate?

An endpoint that never answers holds its slots until each attempt times out, so what is
published for it piles up as deliveries that are due but cannot be sent. Each claim for
the other endpoints skips that backlog; if a claim had to read past all of it after every
ingestion, the live traffic would slow down as the backlog grows.

A receiver process serves a healthy port answering 200 and a blackhole that accepts
connections and never answers (the same one as `blackhole_endpoint.py`). Tenant `bench`
subscribes the healthy port, tenant `dead` the blackhole. One dispatcher process ingests
and delivers, as in production:

- baseline: `--events` events for `bench`, published over one stream in batches of 100,
  from the first publish to the last recorded success;
- backlog: first `--backlog` events for `dead`, then the same live run.

The figure is the live run's rate with the backlog next to the baseline of the same round.
SQLite, the default database. Every loop is bounded in count and time; only 127.0.0.1 is
used.

    .venv/bin/python bench/dead_endpoint_backlog.py [--backlog 50000] [--events 5000]
                                                    [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blackhole_endpoint import ENDPOINTS, endpoints, subscribe
from dispatcher_rates import (
    Dispatcher,
    new_setup,
    publish_all,
    wait_delivered,
)


async def live_rate(healthy: str, blackhole: str, backlog: int, events: int) -> float:
    """Events per second delivered to the healthy endpoint, from the first publish to the
    last recorded success, after `backlog` events for the blackhole."""
    with tempfile.TemporaryDirectory() as directory:
        setup = await new_setup(Path(directory), healthy)
        try:
            await subscribe(setup, blackhole, tenant="dead")
            dispatcher = Dispatcher(
                {
                    **setup.environment(deliver=True),
                    # The dispatcher's defaults: a blackhole holds 16 slots for 15 s each.
                    "DISPATCHER_MAX_CONCURRENT_PER_ENDPOINT": "16",
                    "DISPATCHER_POLL_INTERVAL_SECONDS": "0.5",
                    "DISPATCHER_SHUTDOWN_GRACE_SECONDS": "1",
                }
            )
            try:
                port = await dispatcher.port()
                await dispatcher.ready(port)  # its event is delivered too
                if backlog:
                    await publish_all(port, 0, backlog, tenant="dead")
                started = time.perf_counter()
                await publish_all(port, 0, events)
                return events / await wait_delivered(setup, events + 1, since=started)
            finally:
                dispatcher.stop()
        finally:
            await setup.subscriptions.stop(0)


async def run(args: argparse.Namespace, ports: list[int]) -> list[tuple[float, float]]:
    healthy = f"http://127.0.0.1:{ports[0]}/hook"
    blackhole = f"http://127.0.0.1:{ports[ENDPOINTS]}/hook"
    rounds = []
    for number in range(args.rounds):
        baseline = await live_rate(healthy, blackhole, 0, args.events)
        loaded = await live_rate(healthy, blackhole, args.backlog, args.events)
        print(
            f"round {number + 1}: live {baseline:7.0f} events/s alone, {loaded:7.0f} beside "
            f"{args.backlog} due for a dead endpoint; ratio {loaded / baseline:.2f}",
            flush=True,
        )
        rounds.append((baseline, loaded))
    return rounds


def report(rounds: list[tuple[float, float]], args: argparse.Namespace) -> None:
    baseline = statistics.median(b for b, _ in rounds)
    loaded = statistics.median(loaded for _, loaded in rounds)
    ratio = statistics.median(loaded / b for b, loaded in rounds)
    print(
        f"\n{args.events} live events per run, median of {len(rounds)} rounds, "
        f"{os.cpu_count()} cores"
    )
    print(f"live traffic, nothing else due                   {baseline:8.0f} events/s")
    print(f"live traffic, {args.backlog:>7} due for a dead endpoint  {loaded:8.0f} events/s")
    print(f"ratio                                            {ratio:8.2f}   (target 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=50_000, help="events for the dead one")
    parser.add_argument("--events", type=int, default=5000, help="live events per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with endpoints() as ports:
        report(asyncio.run(run(args, ports)), args)


if __name__ == "__main__":
    main()
