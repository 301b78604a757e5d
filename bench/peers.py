"""Ours against what a Python team would write instead: a Celery worker posting with httpx.

The same N events are delivered two ways to the same receiver process on 127.0.0.1
(`steady_rate.receiver`, answering 200 and keeping each receipt's time), and each way's
end-to-end rate is events / (last receipt - first publish):

- ours: a dispatcher process with its defaults (SQLite, or `--postgres URL`) and the
  subscription service, set up as `steady_rate.py` does; the events are published over
  one PublishEvents stream in batches of 100 (`dispatcher_rates.publish_all`), stored,
  signed (ECDSA P-256), POSTed and recorded;
- the peer: a Celery 5 worker process (`.venv/bin/celery -A peers_celery_app worker`)
  with Redis as its broker (redis://127.0.0.1:6379/15, that db alone flushed before each
  run), one task per delivery published with `delay()` from this process: the task signs
  the same payload the same way with `cryptography`, POSTs the same body and headers with
  a module-level `httpx.Client` (keep-alive), and records the attempt in Redis; acks late
  and retries with backoff (`peers_celery_app.py`). 200 tasks warm the worker up first.

Each Celery pool of `--pools` is measured in turn (a fresh worker each); the ratio is
ours / the fastest of them. The defaults, prefork with 2 processes (one per core) and
threads with 64 (the dispatcher's raw benches keep 64 POSTs in flight), are what such a
team would try first. More concurrency does not help on 2 cores: the worker is bound by
its CPU per task (Celery, kombu, httpx, the signature), not by waiting on POSTs. One run
of 2,000 events per pool: prefork x2 937/s, x4 922/s, x8 1,028/s; threads x8 751/s, x16
766/s, x64 655/s (the README has the figures of whole runs). Ours runs with its defaults
(16 POSTs in flight per endpoint).

Target: ours >= 10x the fastest Celery worker. `--rounds N` repeats everything N times
and reports the medians (of the rates, and of the per-round ratios).

Every loop is bounded in count and time; only 127.0.0.1 receives traffic. Linux only.

    .venv/bin/python bench/peers.py --events 8000 [--rounds 1]
        [--pools prefork:2,threads:64] [--postgres postgresql+psycopg://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher_rates import DETAILS, Dispatcher, Setup, new_setup, publish_all, spawn
from peers_celery_app import BROKER, READY_KEY, deliver_task, store
from steady_rate import TUNED, Receipts, receiver

from webhook_wire.keys import generate_ecdsa_key, key_id, private_key_pem

BENCH = Path(__file__).resolve().parent
TARGET = 10.0
MESSAGE_TYPE = "event.claim.created.v1"
WARMUP = 200
# Cap on one measured run, publishing and draining.
MAX_SECONDS = 300.0
START_SECONDS = 60.0


class Pool(NamedTuple):
    kind: str
    concurrency: int

    @property
    def label(self) -> str:
        return f"Celery {self.kind} x{self.concurrency} + httpx"


@dataclass(frozen=True)
class Run:
    who: str
    events: int  # received, at most the number published
    seconds: float  # first publish to last receipt
    published: float  # seconds to publish them all
    lost: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Round:
    ours: Run
    peers: list[Run]

    @property
    def best(self) -> Run:
        return max(self.peers, key=lambda run: run.rate)

    @property
    def ratio(self) -> float:
        return self.ours.rate / self.best.rate


# --- measuring -------------------------------------------------------------------------


async def wait_count(receipts: Receipts, target: int, *, deadline: float) -> int:
    """The receiver's count once it reaches `target`, or at `deadline` (monotonic)."""
    while True:
        count = await receipts.count()
        if count >= target or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.05)


async def finish(
    who: str, receipts: Receipts, before: int, total: int, *, started: int, published: float
) -> Run:
    """Waits for `total` receipts after the first `before`; `started` is the first
    publish's time (ns since the epoch, the receiver's clock)."""
    await wait_count(receipts, before + total, deadline=time.monotonic() + MAX_SECONDS)
    _, seen = await receipts.since(before)
    last = max((received for _, received in seen), default=started)
    events = min(len(seen), total)
    return Run(who, events, (last - started) / 1e9, published, total - events)


async def ours(port: int, receipts: Receipts, *, total: int, label: str) -> Run:
    before = await receipts.settle()
    started = time.time_ns()
    # Message ids no earlier run used, so a reused PostgreSQL database takes them all.
    published = await publish_all(port, started // 1000, total)
    return await finish(label, receipts, before, total, started=started, published=published)


def publish_tasks(url: str, first: int, total: int) -> None:
    """One Celery task per delivery, as the producer of such a team sends them."""
    for number in range(first, first + total):
        timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        deliver_task.delay(url, f"c-{number}", MESSAGE_TYPE, DETAILS, timestamp)


async def warm_up(receipts: Receipts, url: str) -> int:
    """WARMUP tasks through the worker (its connections opened); the receiver's count."""
    target = await receipts.count() + WARMUP
    await asyncio.to_thread(publish_tasks, url, 0, WARMUP)
    count = await wait_count(receipts, target, deadline=time.monotonic() + START_SECONDS)
    if count < target:
        raise RuntimeError(f"the Celery worker's warm-up took over {START_SECONDS:g} s")
    return count


async def celery(pool: Pool, receipts: Receipts, url: str, *, total: int, key: SigningKey) -> Run:
    store.flushdb()  # the broker's db alone
    with celery_worker(pool, key, key.path.parent / f"celery-{pool.kind}.log"):
        before = await warm_up(receipts, url)
        started, clock = time.time_ns(), time.perf_counter()
        await asyncio.to_thread(publish_tasks, url, WARMUP, total)
        published = time.perf_counter() - clock
        return await finish(
            pool.label, receipts, before, total, started=started, published=published
        )


# --- the Celery worker process -----------------------------------------------------------


class SigningKey(NamedTuple):
    """The peer's ECDSA P-256 key: its PEM file and its id (RFC 7638, as ours)."""

    path: Path
    key_id: str

    @classmethod
    def new(cls, directory: Path) -> SigningKey:
        key = generate_ecdsa_key()
        path = directory / "peer-key.pem"
        path.write_bytes(private_key_pem(key))
        return cls(path, key_id(key))


def worker_environment(pool: Pool, key: SigningKey) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
        "PEERS_BROKER": BROKER,
        "PEERS_KEY_FILE": str(key.path),
        "PEERS_KEY_ID": key.key_id,
        "PEERS_CONNECTIONS": str(pool.concurrency),
    }


def worker_command(pool: Pool) -> list[str]:
    return [
        str(Path(sys.executable).parent / "celery"),
        *("-A", "peers_celery_app", "worker", "--pool", pool.kind),
        *("--concurrency", str(pool.concurrency), "--loglevel", "WARNING"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]


@contextlib.contextmanager
def celery_worker(pool: Pool, key: SigningKey, log: Path) -> Iterator[None]:
    """A worker process consuming from the broker, stopped whatever happens."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            worker_command(pool),
            env=worker_environment(pool, key),
            cwd=BENCH,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its pool children end with it
        )
        try:
            wait_ready(process, log)
            yield
        finally:
            stop(process)


def wait_ready(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not store.get(READY_KEY):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Celery worker did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    """A warm shutdown, then SIGKILL to the worker's process group if it lingers."""
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


# --- the run ---------------------------------------------------------------------------


async def run(args: argparse.Namespace, base: str) -> list[Round]:
    async with aiohttp.ClientSession() as session:
        receipts = Receipts(session, base)
        with tempfile.TemporaryDirectory() as directory:
            setup = await new_setup(Path(directory), f"{base}/hook")
            try:
                return await with_dispatcher(setup, receipts, args=args)
            finally:
                await setup.subscriptions.stop(0)


async def with_dispatcher(
    setup: Setup, receipts: Receipts, *, args: argparse.Namespace
) -> list[Round]:
    """The rounds, on one dispatcher with its defaults (as `steady_rate.py` runs it)."""
    environment = setup.environment(deliver=True)
    for name in TUNED:
        environment.pop(name)
    if args.postgres:
        environment["DISPATCHER_DATABASE_URL"] = args.postgres
    key = SigningKey.new(setup.directory)
    dispatcher = Dispatcher(environment)
    try:
        port = await dispatcher.port()
        await dispatcher.ready(port)
        return [
            await one_round(number, port, receipts, setup.url, key=key, args=args)
            for number in range(1, args.rounds + 1)
        ]
    finally:
        dispatcher.stop()


async def one_round(
    number: int,
    port: int,
    receipts: Receipts,
    url: str,
    *,
    key: SigningKey,
    args: argparse.Namespace,
) -> Round:
    label = f"ours ({database(args)})"
    mine = await ours(port, receipts, total=args.events, label=label)
    print(f"round {number}: {row(mine)}", flush=True)
    peers = []
    for pool in args.pools:
        peers.append(await celery(pool, receipts, url, total=args.events, key=key))
        print(f"round {number}: {row(peers[-1])}", flush=True)
    return Round(mine, peers)


# --- the report ------------------------------------------------------------------------


def database(args: argparse.Namespace) -> str:
    return "PostgreSQL" if args.postgres else "SQLite"


MEDIANS = ("events", "seconds", "rate", "published")
HEADER = f"{'who':<28} {'events':>7} {'seconds':>8} {'events/s':>9} {'publish s':>10}"


def row(run: Run) -> str:
    return line(run.who, run.events, run.seconds, run.rate, run.published, run.lost)


def line(who: str, events: int, seconds: float, rate: float, published: float, lost: int) -> str:
    missing = f"  lost {lost}" if lost else ""
    return f"{who:<28} {events:7d} {seconds:8.2f} {rate:9.0f} {published:10.2f}{missing}"


def verdict(ratio: float, best: str) -> str:
    met = "met" if ratio >= TARGET else "NOT met"
    return f"ours / Celery+httpx: {ratio:.1f}x (target >={TARGET:g}: {met}; against {best})"


def report(rounds: list[Round], args: argparse.Namespace) -> None:
    print(f"\n{args.events} events per run, 1 subscription, {os.cpu_count()} cores")
    for number, result in enumerate(rounds, start=1):
        print(f"round {number}\n{HEADER}")
        for run in (result.ours, *result.peers):
            print(row(run))
        print(verdict(result.ratio, result.best.who))
    if len(rounds) > 1:
        medians(rounds)


def medians(rounds: list[Round]) -> None:
    """Per who: the medians of the rounds (lost: the sum); the median per-round ratio."""
    print(f"medians of {len(rounds)} rounds\n{HEADER}")
    for runs in zip(*((r.ours, *r.peers) for r in rounds), strict=True):
        median = {f: statistics.median(getattr(r, f) for r in runs) for f in MEDIANS}
        events, lost = int(median["events"]), sum(r.lost for r in runs)
        print(
            line(runs[0].who, events, median["seconds"], median["rate"], median["published"], lost)
        )
    ratios = [r.ratio for r in rounds]
    best = statistics.mode(r.best.who for r in rounds)
    print(
        verdict(statistics.median(ratios), best) + f" (rounds {min(ratios):.1f}-{max(ratios):.1f})"
    )


def pools(text: str) -> list[Pool]:
    found = []
    for given in text.split(","):
        kind, _, concurrency = given.partition(":")
        if kind not in {"prefork", "threads", "solo"} or not concurrency.isdigit():
            raise argparse.ArgumentTypeError(f"not a pool: {given!r} (e.g. threads:64)")
        found.append(Pool(kind, int(concurrency)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=8000, help="per run, each way")
    parser.add_argument("--rounds", type=int, default=1, help="everything, repeated")
    parser.add_argument(
        "--pools",
        type=pools,
        default=pools("prefork:2,threads:64"),
        help="Celery worker pools, kind:concurrency, comma-separated (prefork, threads, solo)",
    )
    parser.add_argument("--postgres", metavar="URL", help="postgresql+psycopg://... instead")
    args = parser.parse_args()
    receiving, port = spawn(receiver)
    try:
        report(asyncio.run(run(args, f"http://127.0.0.1:{port}")), args)
    finally:
        receiving.terminate()
        receiving.join(timeout=10)
        store.flushdb()


if __name__ == "__main__":
    main()
