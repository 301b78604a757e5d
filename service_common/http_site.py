"""An aiohttp application served on a host:port, and stopped: the dispatcher's HTTP API
and the console both run this way."""

from __future__ import annotations

import ssl

from aiohttp import web

__all__ = ["HttpSite", "start_site"]


class HttpSite:
    """A running HTTP server of an application: its bound port, and how to stop it."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_site(
    app: web.Application,
    addr: str,
    *,
    shutdown_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpSite:
    """Serves `app` on `addr` (host:port, [v6]:port; port 0 picks a free one).

    With `ssl_context` it serves HTTPS only.
    """
    host, _, port = addr.rpartition(":")
    # No access log, as for the gRPC API; requests in flight get `shutdown_timeout` at stop.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host.strip("[]") or None, int(port), ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return HttpSite(runner, runner.addresses[0][1])
