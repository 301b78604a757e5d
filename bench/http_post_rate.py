"""Webhook POSTs per second to a local receiver: the dispatcher's senders against raw clients.

A receiver (aiohttp.web) runs in a separate process on 127.0.0.1, so the clients measured
here do not share their core with it. Each client posts the same ~1 KB JSON body with
the same number of requests in flight:

- raw aiohttp: a bare `ClientSession.post`, the raw limit of this machine;
- httpx: `httpx.AsyncClient` on its own connection pool;
- httpx-aiohttp: `httpx.AsyncClient` over the `httpx-aiohttp` transport (the httpx API
  with aiohttp underneath), skipped if that package is not installed;
- pyreqwest: the Rust reqwest client's Python binding, the other fast client considered
  for the dispatcher, skipped if that package is not installed;
- raw pycurl: libcurl's multi interface run flat out on a thread, no event loop at all:
  the raw limit of the library `CurlSender` drives;
- HttpSender: the dispatcher's aiohttp sender (the fallback), with its SSRF check and
  bounded read;
- CurlSender: the dispatcher's default sender, the same promises on libcurl.

Every run is bounded in requests and in seconds; the clients take turns, round after
round, and the median of the rounds is reported, with the CPU this process spent per
request and the senders' ratios to raw aiohttp and to raw pycurl (per-round ratios).

    .venv/bin/python bench/http_post_rate.py [--requests 3000] [--concurrency 64]
                                             [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any

import aiohttp
import httpx
import pycurl
from aiohttp import web

from dispatcher_service.curl_sender import CurlSender
from dispatcher_service.http_sender import HttpSender
from dispatcher_service.sending import Timeouts
from dispatcher_service.ssrf import TargetPolicy

BODY = json.dumps(
    {
        "payload": {
            "details": {"messageType": "event.claim.created.v1", "note": "x" * 700},
            "messageId": "09feeb6f-350a-430a-a040-cd1c558cbc91",
            "timestamp": "2021-10-14T15:33:16.848Z",
        },
        "signature": "s" * 96,
    }
).encode()
HEADERS = {"content-type": "application/json", "webhook-id": "msg_bench"}

Post = Callable[[], Awaitable[int]]


def serve(ports: Queue[int]) -> None:
    """The receiver process: answers every POST with 200 after reading the body."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", accept)
    run_forever(app, ports)


def run_forever(app: web.Application, ports: Queue[int]) -> None:
    """Serves `app` on a free port of 127.0.0.1, put on `ports`, until the process ends."""

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        ports.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass(frozen=True)
class Run:
    rate: float
    failures: int
    # CPU seconds this process spent per request, all threads together.
    cpu: float


async def drive(post: Post, *, requests: int, concurrency: int, seconds: float) -> Run:
    """Requests per second of `post`, from `concurrency` workers, bounded in count and time."""
    remaining = requests
    done = failures = 0
    started, cpu = time.perf_counter(), time.process_time()
    deadline = started + seconds

    async def worker() -> None:
        nonlocal remaining, done, failures
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            status = await post()
            done += 1
            failures += status != 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _run(done, failures, started=started, cpu=cpu)


def _run(done: int, failures: int, *, started: float, cpu: float) -> Run:
    return Run(
        rate=done / (time.perf_counter() - started),
        failures=failures,
        cpu=(time.process_time() - cpu) / max(done, 1),
    )


async def aiohttp_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

    async def post() -> int:
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            await response.read()
            return response.status

    return post, session.close


async def httpx_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.AsyncClient(limits=limits)

    async def post() -> int:
        response = await client.post(url, content=BODY, headers=HEADERS)
        return response.status_code

    return post, client.aclose


async def httpx_aiohttp_client(
    url: str, concurrency: int
) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from httpx_aiohttp import AiohttpTransport

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
    client = httpx.AsyncClient(transport=AiohttpTransport(client=session))

    async def post() -> int:
        response = await client.post(url, content=BODY, headers=HEADERS)
        return response.status_code

    return post, client.aclose


async def sender_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    return await _dispatcher_sender(HttpSender, url, concurrency)


async def curl_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    return await _dispatcher_sender(CurlSender, url, concurrency)


async def _dispatcher_sender(
    kind: type[HttpSender] | type[CurlSender], url: str, concurrency: int
) -> tuple[Post, Callable[[], Awaitable[None]]]:
    sender = kind(
        policy=TargetPolicy.parse("127.0.0.0/8"),
        timeouts=Timeouts(connect=5.0, total=30.0),
        per_host_limit=concurrency,
        total_limit=concurrency,
    )

    async def post() -> int:
        result = await sender.send(url, body=BODY, headers=HEADERS)
        return result.status_code or 0

    return post, sender.aclose


Factory = Callable[[str, int], Awaitable[tuple[Post, Callable[[], Awaitable[None]]]]]


async def pyreqwest_client(
    url: str, concurrency: int
) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(concurrency).build()

    async def post() -> int:
        request = client.post(url).body_bytes(BODY).headers(HEADERS).build()
        response = await request.send()
        await response.bytes()
        return int(response.status)

    return post, client.close


def clients() -> dict[str, Factory]:
    found: dict[str, Factory] = {"raw aiohttp": aiohttp_client, "httpx": httpx_client}
    try:
        import httpx_aiohttp  # noqa: F401
    except ImportError:
        print("httpx-aiohttp is not installed: skipping that client")
    else:
        found["httpx-aiohttp"] = httpx_aiohttp_client
    try:
        import pyreqwest  # noqa: F401
    except ImportError:
        print("pyreqwest is not installed: skipping that client")
    else:
        found["pyreqwest"] = pyreqwest_client
    found["HttpSender"] = sender_client
    found["CurlSender"] = curl_client
    return found


def raw_pycurl(url: str, args: argparse.Namespace) -> Run:
    """libcurl alone: `concurrency` handles in one multi, re-added as each finishes."""
    multi = pycurl.CurlMulti()
    handles = [_raw_handle(url) for _ in range(args.concurrency)]
    remaining, done, failures = args.requests, 0, 0
    started, cpu = time.perf_counter(), time.process_time()
    deadline = started + args.seconds
    for handle in handles[: min(remaining, len(handles))]:
        multi.add_handle(handle)
        remaining -= 1
    while done < args.requests - remaining and time.perf_counter() < deadline:
        multi.perform()
        _, succeeded, failed = multi.info_read()
        for handle in succeeded + [item[0] for item in failed]:
            failures += handle in succeeded and handle.getinfo(pycurl.RESPONSE_CODE) != 200
            failures += handle not in succeeded
            done += 1
            multi.remove_handle(handle)
            if remaining > 0:
                remaining -= 1
                multi.add_handle(handle)
        multi.select(0.1)
    multi.close()
    return _run(done, failures, started=started, cpu=cpu)


def _raw_handle(url: str) -> pycurl.Curl:
    handle = pycurl.Curl()
    handle.setopt(pycurl.URL, url)
    handle.setopt(pycurl.POSTFIELDS, BODY)
    handle.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in HEADERS.items()] + ["Expect:"])
    handle.setopt(pycurl.WRITEFUNCTION, len)
    return handle


async def measure_raw_pycurl(url: str, args: argparse.Namespace) -> Run:
    """Run on a thread, as `CurlSender` runs libcurl, with the loop idle meanwhile."""
    warmup = argparse.Namespace(**{**vars(args), "requests": min(args.requests // 10, 500)})
    await asyncio.to_thread(raw_pycurl, url, warmup)
    return await asyncio.to_thread(raw_pycurl, url, args)


async def measure(factory: Factory, url: str, args: argparse.Namespace) -> Run:
    post, close = await factory(url, args.concurrency)
    try:
        # A short warm-up opens the connections, so every client starts from a full pool.
        warmup = min(args.requests // 10, 500)
        await drive(post, requests=warmup, concurrency=args.concurrency, seconds=args.seconds)
        return await drive(
            post, requests=args.requests, concurrency=args.concurrency, seconds=args.seconds
        )
    finally:
        await close()


async def bench(url: str, args: argparse.Namespace) -> dict[str, list[Run]]:
    factories = clients()
    runs: dict[str, list[Run]] = {name: [] for name in [*factories, "raw pycurl"]}
    for round_number in range(args.rounds):
        for name in runs:
            if name == "raw pycurl":
                run = await measure_raw_pycurl(url, args)
            else:
                run = await measure(factories[name], url, args)
            runs[name].append(run)
            print(f"round {round_number + 1}: {name:<14} {run.rate:9.0f} req/s")
    return runs


def report(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    medians = {name: statistics.median(r.rate for r in rs) for name, rs in runs.items()}
    print(
        f"\n{args.requests} POSTs of {len(BODY)} bytes per run, {args.concurrency} in flight, "
        f"median of {args.rounds} rounds"
    )
    for name, rate in medians.items():
        failures = sum(r.failures for r in runs[name])
        ratio = rate / medians["raw aiohttp"]
        cpu = statistics.median(r.cpu for r in runs[name]) * 1e6
        print(
            f"{name:<14} {rate:9.0f} req/s  {cpu:5.0f} us CPU/req  "
            f"{ratio:5.2f} x raw aiohttp  failures: {failures}"
        )
    for sender, raw in [
        ("HttpSender", "raw aiohttp"),
        ("CurlSender", "raw aiohttp"),
        ("CurlSender", "raw pycurl"),
    ]:
        ratios = [s.rate / r.rate for s, r in zip(runs[sender], runs[raw], strict=True)]
        print(f"{sender} / {raw}: {statistics.median(ratios):.2f} (median of per-round ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="cap on each run")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    ports: Queue[Any] = context.Queue()
    receiver = context.Process(target=serve, args=(ports,), daemon=True)
    receiver.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}/hook"
        report(asyncio.run(bench(url, args)), args)
    finally:
        receiver.terminate()
        receiver.join(timeout=10)


if __name__ == "__main__":
    main()
