"""The dispatcher's cost at a steady, low load: CPU per event and publish-to-receipt latency.

A dispatcher process with its defaults (but for what local delivery needs) delivers each
event to one subscription: a receiver process on 127.0.0.1 that records, per delivery,
the event's publish time (carried in its details as `publishedNs`) and its own receipt
time (`time.time_ns()` as the request reaches the handler). SQLite by default, or
`--postgres URL` (used as given, as `soak.py` does; message ids never repeat).

First the saturated figure of the same run: SATURATED_EVENTS events published as fast
as one stream takes them; CPU per event is the dispatcher process's utime+stime
(/proc/<pid>/stat) from the first publish to the last receipt, over those events. Then,
for each `--rates` value, events published at that rate over one PublishEvents stream
(`soak.publish_steadily`: batches on a 50 ms timer) for `--warmup` seconds, not counted,
then `--seconds` measured: CPU over the events received in that window, its share of a
core, and latency (receipt - publish) p50/p99/max of the events published in it.

`--rounds N` repeats the saturated run and the rates N times on the same dispatcher and
reports each round and the medians of the per-round ratios: on a small virtual machine
one round's ratio swings by a third.

`--rates half` publishes at half the rate the saturated run of the same round delivered
(its delivery capacity), the load at which publish-to-receipt latency is judged.

Targets: CPU per event at a rate <= 2x the saturated figure; p99 <= 50 ms on SQLite,
<= 100 ms on PostgreSQL, at 100 and 500 events/s and at half the capacity.

`--profile DIR` records the dispatcher with py-spy over each measured window (one
speedscope file per rate; open at https://www.speedscope.app).

Every loop is bounded in count and time; only 127.0.0.1 receives traffic. Linux only.

    .venv/bin/python bench/steady_rate.py [--rates 100,500,half] [--seconds 30] [--warmup 3]
        [--rounds 1] [--postgres postgresql+psycopg://127.0.0.1:5432/test] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher_rates import DETAILS, Dispatcher, new_setup, publish_all, spawn
from http_post_rate import run_forever
from soak import Published, dispatcher_pid, publish_steadily

SATURATED_EVENTS = 8000
# After publishing stops, how long the dispatcher may take to deliver what it accepted.
DRAIN_SECONDS = 60.0
MAX_RATIO = 2.0
# A --rates value: half of the delivery capacity the saturated run measured, as the
# latency targets are set for.
HALF = "half"
MAX_P99_MS = {"SQLite": 50.0, "PostgreSQL": 100.0}
# Settings Setup.environment() tunes for throughput; the issue measures the defaults.
TUNED = ("DISPATCHER_POLL_INTERVAL_SECONDS", "DISPATCHER_MAX_CONCURRENT_PER_ENDPOINT")


# --- the receiver process --------------------------------------------------------------


def receiver(ports: Queue[int]) -> None:
    """Answers every POST to /hook with 200 and keeps (publishedNs, receipt ns) for each;
    GET /receipts?from=N returns the count so far and the receipts from the N-th on."""
    receipts: list[tuple[int, int]] = []

    async def accept(request: web.Request) -> web.Response:
        received = time.time_ns()
        body = orjson.loads(await request.read())
        receipts.append((int(body["payload"]["details"].get("publishedNs", 0)), received))
        return web.Response(text="ok")

    async def listing(request: web.Request) -> web.Response:
        start = int(request.query.get("from", "0"))
        return web.json_response({"count": len(receipts), "receipts": receipts[start:]})

    app = web.Application()
    app.router.add_post("/hook", accept)
    app.router.add_get("/receipts", listing)
    run_forever(app, ports)


class Receipts:
    """The receiver process, seen from here."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self._url = f"{base}/receipts"

    async def since(self, start: int) -> tuple[int, list[tuple[int, int]]]:
        async with self._session.get(self._url, params={"from": str(start)}) as response:
            body = await response.json()
        return body["count"], [(p, r) for p, r in body["receipts"]]

    async def count(self) -> int:
        count, _ = await self.since(1 << 62)
        return count

    async def wait_for(self, target: int) -> int:
        """The count once it reaches `target`, or when DRAIN_SECONDS have passed."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while True:
            count = await self.count()
            if count >= target or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.05)

    async def settle(self, *, quiet: float = 1.0) -> int:
        """The count once it has not changed for `quiet` seconds (bounded)."""
        deadline = time.monotonic() + DRAIN_SECONDS
        count = await self.count()
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet)
            if (now := await self.count()) == count:
                break
            count = now
        return count


# --- one measurement -------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    label: str
    events: int  # delivered in the window
    cpu_seconds: float
    wall_seconds: float
    latencies_ms: list[float]
    lost: int  # accepted in the phase but never received

    @property
    def cpu_per_event(self) -> float:
        return self.cpu_seconds / self.events if self.events else float("nan")


def stamped_details() -> str:
    return json.dumps({**json.loads(DETAILS), "publishedNs": time.time_ns()})


def cpu(dispatcher: Dispatcher) -> float:
    seconds = dispatcher.cpu_seconds()
    if seconds is None:
        raise RuntimeError("the dispatcher's /proc/<pid>/stat cannot be read (Linux only)")
    return seconds


async def saturated(dispatcher: Dispatcher, port: int, receipts: Receipts) -> Measured:
    before = await receipts.settle()
    cpu_before, started = cpu(dispatcher), time.perf_counter()
    # Message ids no earlier run used, so a reused PostgreSQL database takes them all.
    await publish_all(port, time.time_ns() // 1000, SATURATED_EVENTS)
    after = await receipts.wait_for(before + SATURATED_EVENTS)
    cpu_after, elapsed = cpu(dispatcher), time.perf_counter() - started
    delivered = after - before
    return Measured(
        label="saturated",
        events=delivered,
        cpu_seconds=cpu_after - cpu_before,
        wall_seconds=elapsed,
        latencies_ms=[],
        lost=SATURATED_EVENTS - delivered,
    )


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_profile(directory: Path, *, rate: float, seconds: float) -> subprocess.Popen[bytes]:
    executable = py_spy()
    assert executable is not None
    output = directory / f"dispatcher-{rate:g}-per-s.speedscope.json"
    # --nonblocking: sampling does not pause the dispatcher, so its CPU and latency are
    # disturbed as little as py-spy can.
    return subprocess.Popen(
        [
            executable,
            "record",
            "--pid",
            str(dispatcher_pid()),
            "--duration",
            str(max(1, round(seconds))),
            "--format",
            "speedscope",
            "--nonblocking",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
    )


async def steady(
    dispatcher: Dispatcher,
    port: int,
    receipts: Receipts,
    *,
    rate: float,
    args: argparse.Namespace,
    label: str | None = None,
) -> Measured:
    before = await receipts.settle()
    published = Published()
    publisher = asyncio.create_task(
        publish_steadily(port, rate, args.warmup + args.seconds, published, details=stamped_details)
    )
    await asyncio.sleep(args.warmup)
    cpu_before, window_start = cpu(dispatcher), time.time_ns()
    profiler = None
    if args.profile:
        profiler = start_profile(args.profile, rate=rate, seconds=args.seconds)
    await asyncio.wait_for(publisher, timeout=args.seconds + 30)
    cpu_after, window_end = cpu(dispatcher), time.time_ns()
    if profiler is not None:
        await asyncio.to_thread(profiler.wait, 60)
    count = await receipts.wait_for(before + published.accepted)
    _, seen = await receipts.since(before)
    in_window = [p for p, r in seen if window_start <= r <= window_end]
    latencies = [(r - p) / 1e6 for p, r in seen if window_start <= p <= window_end]
    return Measured(
        label=f"{rate:.0f}/s" if label is None else label,
        events=len(in_window),
        cpu_seconds=cpu_after - cpu_before,
        wall_seconds=(window_end - window_start) / 1e9,
        latencies_ms=latencies,
        lost=published.accepted - (count - before),
    )


# --- the report ------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(rounds: list[list[Measured]], *, database: str, args: argparse.Namespace) -> None:
    print(
        f"\n{database}, 1 subscription, {os.cpu_count()} cores; {args.seconds:g} s per rate "
        f"after {args.warmup:g} s of warm-up; saturated: {SATURATED_EVENTS} events"
    )
    for number, results in enumerate(rounds, start=1):
        base = results[0]
        print(f"round {number}: saturated at {base.events / base.wall_seconds:.0f} events/s")
        table(results, database=database)
    if len(rounds) > 1:
        medians(rounds, database=database)


def medians(rounds: list[list[Measured]], *, database: str) -> None:
    """Per rate: the median of the rounds' ratios and the worst of their p99s."""
    print(f"medians of {len(rounds)} rounds")
    for index, result in enumerate(rounds[0][1:], start=1):
        ratios = [r[index].cpu_per_event / r[0].cpu_per_event for r in rounds]
        cpu = statistics.median(r[index].cpu_per_event for r in rounds)
        p99 = max(percentile(r[index].latencies_ms, 0.99) for r in rounds)
        ratio = statistics.median(ratios)
        print(
            f"{result.label:>10}: CPU {cpu * 1e3:.3f} ms/event, ratio {ratio:.2f} "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f}; target {MAX_RATIO:g}: "
            f"{'met' if ratio <= MAX_RATIO else 'NOT met'}), worst p99 {p99:.1f} ms "
            f"(target {MAX_P99_MS[database]:g}: "
            f"{'met' if p99 <= MAX_P99_MS[database] else 'NOT met'})"
        )


def table(results: list[Measured], *, database: str) -> None:
    base = results[0]
    max_p99 = MAX_P99_MS[database]
    print(
        f"{'rate':>10} {'events':>7} {'CPU ms/ev':>10} {'core':>6} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'lost':>5}  targets"
    )
    for result in results:
        ratio = result.cpu_per_event / base.cpu_per_event
        share = result.cpu_seconds / result.wall_seconds
        p50 = statistics.median(result.latencies_ms) if result.latencies_ms else float("nan")
        p99 = percentile(result.latencies_ms, 0.99)
        worst = max(result.latencies_ms, default=float("nan"))
        verdict = ""
        if result is not base:
            ratio_ok = "met" if ratio <= MAX_RATIO else "NOT met"
            p99_ok = "met" if p99 <= max_p99 else "NOT met"
            verdict = f"ratio <= {MAX_RATIO:g}: {ratio_ok}; p99 <= {max_p99:g} ms: {p99_ok}"
        print(
            f"{result.label:>10} {result.events:7d} {result.cpu_per_event * 1e3:10.3f} "
            f"{share:6.2f} {ratio:6.2f} {p50:7.1f} {p99:7.1f} {worst:7.1f} {result.lost:5d}  "
            f"{verdict}"
        )


# --- the run ---------------------------------------------------------------------------


async def run(args: argparse.Namespace, base: str) -> list[list[Measured]]:
    async with aiohttp.ClientSession() as session:
        receipts = Receipts(session, base)
        with tempfile.TemporaryDirectory() as directory:
            setup = await new_setup(Path(directory), f"{base}/hook")
            environment = setup.environment(deliver=True)
            for name in TUNED:
                environment.pop(name)
            if args.postgres:
                environment["DISPATCHER_DATABASE_URL"] = args.postgres
            try:
                dispatcher = Dispatcher(environment)
                try:
                    port = await dispatcher.port()
                    await dispatcher.ready(port)
                    rounds = [
                        await one_round(dispatcher, port, receipts, args=args)
                        for _ in range(args.rounds)
                    ]
                finally:
                    dispatcher.stop()
            finally:
                await setup.subscriptions.stop(0)
    return rounds


async def one_round(
    dispatcher: Dispatcher, port: int, receipts: Receipts, *, args: argparse.Namespace
) -> list[Measured]:
    """The saturated figure, then each rate's."""
    results = [await saturated(dispatcher, port, receipts)]
    print(f"saturated: {results[0].cpu_per_event * 1e3:.3f} ms/event", flush=True)
    capacity = results[0].events / results[0].wall_seconds
    for given in args.rates:
        rate = capacity / 2 if given == HALF else float(given)
        label = f"{HALF} {rate:.0f}/s" if given == HALF else None
        result = await steady(dispatcher, port, receipts, rate=rate, args=args, label=label)
        print(f"{result.label}: {result.cpu_per_event * 1e3:.3f} ms/event", flush=True)
        results.append(result)
    return results


def rates(text: str) -> list[str]:
    given = text.split(",")
    for rate in given:
        if rate != HALF and not rate.replace(".", "", 1).isdigit():
            raise argparse.ArgumentTypeError(f"not a rate: {rate!r}")
    return given


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--rates",
        type=rates,
        default=["100", "500"],
        help=f"events/s, comma-separated; '{HALF}': half the saturated rate of the round",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="measured, per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="not measured, per rate")
    parser.add_argument("--rounds", type=int, default=1, help="saturated and rates, repeated")
    parser.add_argument("--postgres", metavar="URL", help="postgresql+psycopg://... instead")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy output, per rate")
    args = parser.parse_args()
    if args.profile:
        if py_spy() is None:
            parser.exit(2, "--profile needs py-spy: .venv/bin/pip install py-spy\n")
        args.profile.mkdir(parents=True, exist_ok=True)
    receiving, port = spawn(receiver)
    try:
        rounds = asyncio.run(run(args, f"http://127.0.0.1:{port}"))
        report(rounds, database="PostgreSQL" if args.postgres else "SQLite", args=args)
    finally:
        receiving.terminate()
        receiving.join(timeout=10)


if __name__ == "__main__":
    main()
