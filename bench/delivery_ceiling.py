"""What delivery costs besides the POST, and the delivery ratio that leaves room for.

`dispatcher_rates.py` compares delivery with raw aiohttp POSTs to the same receiver. The
delivery worker spends CPU on more than the POST: the claim, the signature, the
bookkeeping of each attempt and the record of it. This bench measures that part alone,
in one process, to show how close to the raw rate one delivering event loop can come:

- raw POST: aiohttp POSTs, 64 in flight, to a receiver process answering 200; CPU time
  of this process per POST;
- delivery without HTTP: a `DeliveryWorker` as the dispatcher builds it (SQLite store,
  ECDSA P-256 key ring, 64 in flight to the endpoint) whose sender answers 200 at once;
  CPU time per delivery, claimed, signed and recorded;
- delivery: the same worker with the dispatcher's default `CurlSender` (libcurl), and
  with its aiohttp fallback `HttpSender`, to the same receiver;
- raw pycurl: libcurl's multi interface alone, 64 in flight, on a thread; CPU per POST;
- delivery, bare aiohttp: the worker with a bare `ClientSession.post` as the sender,
  which tells what `HttpSender` adds from what running POSTs inside the worker adds;
- delivery from memory: the worker with `CurlSender` claiming from a `MemoryQueue`, which
  tells what the worker itself costs apart from the database.

The ceiling is raw / (raw + without HTTP): the CPU ratio a delivery could reach if its
POST cost no more than a raw aiohttp one, when one event loop does all of it. What a
delivery costs beyond the raw POST of its own library is delivery - raw, for each sender.

The services' collector settings (`service_common.garbage_collection`) apply here too.
Every loop is bounded in count and time; only 127.0.0.1 receives traffic.

It runs on the standard event loop, as the services do by default (`--loop uvloop` for
libuv's).

    .venv/bin/python bench/delivery_ceiling.py [--events 10000] [--rounds 3] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher_rates import DETAILS, raw_post_rate, spawn
from http_post_rate import raw_pycurl, serve

from dispatcher_service.curl_sender import CurlSender
from dispatcher_service.database import create_engine, migrate
from dispatcher_service.delivery_queue import DeliveryQueue
from dispatcher_service.domain import DeliveryState, PreparedEvent, Target
from dispatcher_service.http_sender import HttpSender
from dispatcher_service.keyring import KeyRing
from dispatcher_service.memory_queue import MemoryQueue
from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.retry import RetrySchedule
from dispatcher_service.routing import Route
from dispatcher_service.sending import AttemptResult, Timeouts
from dispatcher_service.signing import SignatureAlgorithm
from dispatcher_service.ssrf import TargetPolicy
from dispatcher_service.store import DeliveryStore
from dispatcher_service.worker import DeliveryWorker, Sender, WorkerLimits
from service_common import event_loop
from service_common.garbage_collection import tune_for_service
from webhook_wire.canonical import payload_as_string

SUBSCRIPTION = "sub_bench"
IN_FLIGHT = 64
SECONDS = 60.0
BATCH = 500


class Routes:
    def __init__(self, url: str) -> None:
        self._route = Route(
            subscription_id=SUBSCRIPTION,
            tenant="bench",
            url=url,
            signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
            secret=None,
            enabled=True,
        )

    def is_ready(self) -> bool:
        return True

    def route(self, subscription_id: str) -> Route | None:
        return self._route if subscription_id == SUBSCRIPTION else None


class BareAiohttp:
    """A sender that is nothing but `ClientSession.post`, as the raw client uses it."""

    def __init__(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT))

    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        async with self._session.post(url, data=body, headers=headers) as response:
            await response.read()
            return AttemptResult(
                status_code=response.status,
                latency=0.0,
                error=None,
                response_snippet="",
                retry_after=None,
            )

    async def aclose(self) -> None:
        await self._session.close()


class AnswerAtOnce:
    """A sender whose every POST succeeds at once, without a byte sent."""

    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        await asyncio.sleep(0)
        return AttemptResult(
            status_code=200, latency=0.0, error=None, response_snippet="ok", retry_after=None
        )


def backlog(store: DeliveryQueue, url: str, total: int) -> None:
    """`total` events of the shape the dispatcher stores, one delivery each, all due."""
    now = datetime.now(UTC)
    for start in range(0, total, BATCH):
        events = []
        for i in range(start, min(start + BATCH, total)):
            payload = {
                "details": {**json.loads(DETAILS), "messageType": "event.claim.created.v1"},
                "messageId": f"b-{i}",
                "timestamp": "2026-11-29T10:00:00.000Z",
            }
            events.append(
                PreparedEvent(
                    tenant="bench",
                    message_id=f"b-{i}",
                    message_type="event.claim.created.v1",
                    payload=payload_as_string(payload),
                    targets=(Target(SUBSCRIPTION, url),),
                )
            )
        store.ingest(events, now=now)


@contextlib.contextmanager
def opened_queue(directory: Path, url: str, total: int, *, memory: bool) -> Iterator[DeliveryQueue]:
    """A backlog of `total` due deliveries: in a SQLite store as the dispatcher's default,
    or in a `MemoryQueue` (everything the worker does but the database)."""
    if memory:
        queue = MemoryQueue()
        backlog(queue, url, total)
        yield queue
        return
    engine = create_engine(f"sqlite:///{directory / 'dispatcher.db'}")
    try:
        migrate(engine)
        store = DeliveryStore(engine)
        backlog(store, url, total)
        yield store
    finally:
        engine.dispose()


async def delivery_cpu(
    directory: Path, url: str, total: int, sender: Sender, *, memory: bool = False
) -> float:
    """CPU seconds of this process per delivery, for `total` deliveries through `sender`."""
    with opened_queue(directory, url, total, memory=memory) as queue:
        metrics = DispatcherMetrics()
        worker = new_worker(queue, directory, url, sender, metrics)
        cpu = time.process_time()
        worker.start()
        try:
            await delivered(metrics, total)
        finally:
            await worker.stop(5)
        return (time.process_time() - cpu) / total


def new_worker(
    queue: DeliveryQueue, directory: Path, url: str, sender: Sender, metrics: DispatcherMetrics
) -> DeliveryWorker:
    async def never_disable(subscription_id: str, reason: str) -> None:
        raise AssertionError(f"{subscription_id} disabled: {reason}")

    return DeliveryWorker(
        store=queue,
        routes=Routes(url),
        sender=sender,
        signer=KeyRing.open(directory / "keys"),
        disable=never_disable,
        schedule=RetrySchedule.parse("1s"),
        disable_policy=None,
        limits=WorkerLimits(per_endpoint=IN_FLIGHT),
        user_agent="bench",
        metrics=metrics,
    )


async def delivered(metrics: DispatcherMetrics, total: int) -> None:
    """Returns once `total` successes are recorded, within `SECONDS`."""
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        # The worker's own count of recorded successes: asking the database would add
        # to the CPU time measured.
        succeeded = metrics.registry.get_sample_value(
            "webhooks_deliveries_total", {"outcome": DeliveryState.SUCCEEDED.value}
        )
        if (succeeded or 0) >= total:
            return
    raise RuntimeError(f"not all of {total} delivered in {SECONDS}s")


@dataclass
class Round:
    raw: float
    raw_curl: float
    without_http: float
    curl: float
    aiohttp: float
    bare: float
    memory_curl: float


SENDERS = ("curl", "aiohttp", "bare")


async def sender_cpu(url: str, total: int, kind: str, *, memory: bool = False) -> float:
    """CPU seconds per delivery with one of the dispatcher's senders, or a bare aiohttp one;
    from a `MemoryQueue` if `memory`."""
    sender: CurlSender | HttpSender | BareAiohttp
    if kind == "bare":
        sender = BareAiohttp()
    else:
        sender = (CurlSender if kind == "curl" else HttpSender)(
            policy=TargetPolicy.parse("127.0.0.0/8"),
            timeouts=Timeouts(connect=5.0, total=30.0),
            per_host_limit=IN_FLIGHT,
        )
    try:
        with tempfile.TemporaryDirectory() as directory:
            return await delivery_cpu(Path(directory), url, total, sender, memory=memory)
    finally:
        await sender.aclose()


async def one_round(url: str, total: int, number: int) -> Round:
    _, raw = await raw_post_rate(url, total)
    flat_out = argparse.Namespace(requests=total, concurrency=IN_FLIGHT, seconds=SECONDS)
    raw_curl = (await asyncio.to_thread(raw_pycurl, url, flat_out)).cpu
    with tempfile.TemporaryDirectory() as directory:
        without_http = await delivery_cpu(Path(directory), url, total, AnswerAtOnce())
    # Whichever runs later tends to cost less: the senders take turns going first.
    order = SENDERS[number % 3 :] + SENDERS[: number % 3]
    cpu = {kind: await sender_cpu(url, total, kind) for kind in order}
    memory_curl = await sender_cpu(url, total, "curl", memory=True)
    return Round(raw, raw_curl, without_http, cpu["curl"], cpu["aiohttp"], cpu["bare"], memory_curl)


async def run(url: str, args: argparse.Namespace) -> list[Round]:
    rounds = []
    for number in range(args.rounds):
        result = await one_round(url, args.events, number)
        rounds.append(result)
        print(
            f"round {number + 1}: raw aiohttp POST {result.raw * 1e6:.0f} us, raw pycurl "
            f"{result.raw_curl * 1e6:.0f} us, without HTTP {result.without_http * 1e6:.0f} us, "
            f"CurlSender {result.curl * 1e6:.0f} us, HttpSender {result.aiohttp * 1e6:.0f} us, "
            f"bare aiohttp {result.bare * 1e6:.0f} us, CurlSender from memory "
            f"{result.memory_curl * 1e6:.0f} us"
        )
    return rounds


def report(rounds: list[Round], total: int) -> None:
    def median_us(field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in rounds)) * 1e6

    ceiling = statistics.median(r.raw / (r.raw + r.without_http) for r in rounds)
    beyond_curl = statistics.median(r.curl - r.raw_curl for r in rounds) * 1e6
    beyond_aiohttp = statistics.median(r.aiohttp - r.raw for r in rounds) * 1e6
    beyond_memory = statistics.median(r.memory_curl - r.raw_curl for r in rounds) * 1e6
    print(f"\n{total} deliveries per run, CPU time of one process, median of {len(rounds)} rounds")
    print(f"raw aiohttp POST, 64 in flight               {median_us('raw'):6.0f} us per POST")
    print(f"raw pycurl POST, 64 in flight                {median_us('raw_curl'):6.0f} us per POST")
    print(f"delivery without HTTP (claim, sign, record)  {median_us('without_http'):6.0f} us")
    print(f"delivery with CurlSender                     {median_us('curl'):6.0f} us")
    print(f"delivery with HttpSender                     {median_us('aiohttp'):6.0f} us")
    print(f"delivery with bare aiohttp                   {median_us('bare'):6.0f} us")
    print(f"delivery with CurlSender, MemoryQueue        {median_us('memory_curl'):6.0f} us")
    print(f"CurlSender beyond a raw pycurl POST          {beyond_curl:6.0f} us (target <= 60)")
    print(f"HttpSender beyond a raw aiohttp POST         {beyond_aiohttp:6.0f} us")
    print(f"the same from a MemoryQueue (no database)    {beyond_memory:6.0f} us")
    print(f"ceiling raw aiohttp / (raw + without HTTP)   {ceiling:6.2f}")
    for field in ("curl", "aiohttp"):
        ratio = statistics.median(r.raw / getattr(r, field) for r in rounds)
        print(f"raw aiohttp CPU / delivery CPU, {field:<8}     {ratio:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    tune_for_service()
    receiver, port = spawn(serve)
    try:
        url = f"http://127.0.0.1:{port}/hook"
        report(event_loop.run(run(url, args), loop=args.loop), args.events)
    finally:
        receiver.terminate()
        receiver.join(timeout=10)


if __name__ == "__main__":
    main()
