"""A real HTTP receiver for tests: records every request, answers as each test asks.

Each path has a script of answers, one per request, the last repeated: a status code,
`("status", {"Retry-After": "1"})` for extra headers, or "hang" to never answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["ReceivedRequest", "Receiver"]

Answer = int | str | tuple[int, Mapping[str, str]]


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: Mapping[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[ReceivedRequest] = field(default_factory=list)
    _scripts: dict[str, list[Answer]] = field(default_factory=dict)
    _served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        self._scripts[path] = list(answers)

    def on(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        # A short shutdown: handlers told to hang must not hold the test up for a minute.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(
        self, count: int, *, path: str | None = None, within: float = 20
    ) -> list[ReceivedRequest]:
        """Waits until `count` requests (to `path`, if given) have arrived; returns them."""

        def enough() -> bool:
            return len(self.on(path) if path else self.requests) >= count

        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(enough), within)
        return self.on(path) if path else list(self.requests)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        index = self._served[path]
        self._served[path] += 1
        async with self._arrived:
            self.requests.append(
                ReceivedRequest(path, dict(request.headers), body, time.monotonic())
            )
            self._arrived.notify_all()
        script = self._scripts.get(path, [200])
        answer = script[min(index, len(script) - 1)]
        if answer == "hang":
            await asyncio.sleep(3600)
        if isinstance(answer, tuple):
            status, headers = answer
            return web.Response(status=status, headers=dict(headers), text="scripted")
        assert isinstance(answer, int)
        return web.Response(status=answer, text="ok" if answer < 300 else "scripted failure")
