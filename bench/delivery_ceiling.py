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
- delivery: the same worker with the dispatcher's `HttpSender`, to the same receiver;
- delivery, bare aiohttp: the same again with a bare `ClientSession.post` as the sender,
  which tells what `HttpSender` adds from what running POSTs inside the worker adds.

The ceiling is raw / (raw + without HTTP): the CPU ratio a delivery could reach if its
POST cost no more than a raw one, when one event loop does all of it.

The services' collector settings (`service_common.garbage_collection`) apply here too.
Every loop is bounded in count and time; only 127.0.0.1 receives traffic.

    .venv/bin/python bench/delivery_ceiling.py [--events 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher_rates import DETAILS, raw_post_rate, spawn
from http_post_rate import serve

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.domain import DeliveryState, PreparedEvent, Target
from dispatcher_service.http_sender import AttemptResult, HttpSender, Timeouts
from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.retry import RetrySchedule
from dispatcher_service.routing import Route
from dispatcher_service.signing import KeyRing, SignatureAlgorithm
from dispatcher_service.ssrf import TargetPolicy
from dispatcher_service.store import DeliveryStore
from dispatcher_service.worker import DeliveryWorker, Sender, WorkerLimits
from service_common.garbage_collection import tune_for_service
from webhook_receiver import payload_as_string

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


def backlog(store: DeliveryStore, url: str, total: int) -> None:
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


async def delivery_cpu(directory: Path, url: str, total: int, sender: Sender) -> float:
    """CPU seconds of this process per delivery, for `total` deliveries through `sender`."""
    engine = create_engine(f"sqlite:///{directory / 'dispatcher.db'}")
    try:
        migrate(engine)
        store = DeliveryStore(engine)
        backlog(store, url, total)

        async def never_disable(subscription_id: str, reason: str) -> None:
            raise AssertionError(f"{subscription_id} disabled: {reason}")

        metrics = DispatcherMetrics()
        worker = DeliveryWorker(
            store=store,
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
        cpu = time.process_time()
        worker.start()
        deadline = time.monotonic() + SECONDS
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                # The worker's own count of recorded successes: asking the database
                # would add to the CPU time measured.
                succeeded = metrics.registry.get_sample_value(
                    "webhooks_deliveries_total", {"outcome": DeliveryState.SUCCEEDED.value}
                )
                if (succeeded or 0) >= total:
                    break
            else:
                raise RuntimeError(f"not all of {total} delivered in {SECONDS}s")
        finally:
            await worker.stop(5)
        return (time.process_time() - cpu) / total
    finally:
        engine.dispose()


@dataclass
class Round:
    raw: float
    without_http: float
    delivery: float
    bare: float


async def sender_cpu(url: str, total: int, *, bare: bool) -> float:
    """CPU seconds per delivery with the dispatcher's sender, or a bare aiohttp one."""
    sender: HttpSender | BareAiohttp = (
        BareAiohttp()
        if bare
        else HttpSender(
            policy=TargetPolicy.parse("127.0.0.0/8"),
            timeouts=Timeouts(connect=5.0, total=30.0),
            per_host_limit=IN_FLIGHT,
            limit_slots=False,
        )
    )
    try:
        with tempfile.TemporaryDirectory() as directory:
            return await delivery_cpu(Path(directory), url, total, sender)
    finally:
        await sender.aclose()


async def one_round(url: str, total: int, number: int) -> Round:
    _, raw = await raw_post_rate(url, total)
    with tempfile.TemporaryDirectory() as directory:
        without_http = await delivery_cpu(Path(directory), url, total, AnswerAtOnce())
    # Whichever runs later tends to cost less: the two take turns going first.
    if number % 2:
        bare = await sender_cpu(url, total, bare=True)
        delivery = await sender_cpu(url, total, bare=False)
    else:
        delivery = await sender_cpu(url, total, bare=False)
        bare = await sender_cpu(url, total, bare=True)
    return Round(raw, without_http, delivery, bare)


async def run(url: str, args: argparse.Namespace) -> list[Round]:
    rounds = []
    for number in range(args.rounds):
        result = await one_round(url, args.events, number)
        rounds.append(result)
        print(
            f"round {number + 1}: raw POST {result.raw * 1e6:.0f} us, delivery without HTTP "
            f"{result.without_http * 1e6:.0f} us, delivery {result.delivery * 1e6:.0f} us, "
            f"with bare aiohttp {result.bare * 1e6:.0f} us"
        )
    return rounds


def report(rounds: list[Round], total: int) -> None:
    raw = statistics.median(r.raw for r in rounds)
    without_http = statistics.median(r.without_http for r in rounds)
    delivery = statistics.median(r.delivery for r in rounds)
    bare = statistics.median(r.bare for r in rounds)
    ceiling = statistics.median(r.raw / (r.raw + r.without_http) for r in rounds)
    ratio = statistics.median(r.raw / r.delivery for r in rounds)
    print(f"\n{total} deliveries per run, CPU time of one process, median of {len(rounds)} rounds")
    print(f"raw aiohttp POST, 64 in flight         {raw * 1e6:6.0f} us per POST")
    print(f"delivery without HTTP (claim, sign, record)  {without_http * 1e6:6.0f} us per delivery")
    print(f"delivery with HttpSender               {delivery * 1e6:6.0f} us per delivery")
    print(f"delivery with bare aiohttp             {bare * 1e6:6.0f} us per delivery")
    print(f"ceiling raw / (raw + without HTTP)     {ceiling:6.2f}")
    print(f"delivery ratio raw / delivery          {ratio:6.2f} (target 0.6)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tune_for_service()
    receiver, port = spawn(serve)
    try:
        report(asyncio.run(run(f"http://127.0.0.1:{port}/hook", args)), args.events)
    finally:
        receiver.terminate()
        receiver.join(timeout=10)


if __name__ == "__main__":
    main()
