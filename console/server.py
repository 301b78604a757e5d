"""Starting and stopping the console: the web app on `CONSOLE_HTTP_ADDR`, channels to both
services."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from yarl import URL

from console.app import create_app
from console.services import Services
from console.session import session_key
from console.settings import ConsoleSettings
from service_common.http_site import HttpSite, start_site
from service_common.lifecycle import wait_for_shutdown_signal
from service_common.ports import check_free
from service_common.tls import server_tls

__all__ = ["RunningConsole", "serve", "start_console"]

log = logging.getLogger(__name__)


@dataclass
class RunningConsole:
    site: HttpSite
    services: Services
    scheme: str

    @property
    def port(self) -> int:
        return self.site.port

    async def stop(self) -> None:
        await self.site.stop()
        await self.services.close()


async def start_console(settings: ConsoleSettings) -> RunningConsole:
    """Serves the console; a bad TLS setting or a taken address raises before it starts."""
    check_free({"CONSOLE_HTTP_ADDR": settings.http_addr})
    tls = server_tls(
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        client_ca_file=None,
        names=("CONSOLE_TLS_CERT_FILE", "CONSOLE_TLS_KEY_FILE", "CONSOLE_TLS_CLIENT_CA_FILE"),
    )
    public = URL(str(settings.public_url)) if settings.public_url is not None else None
    services = Services(settings)
    app = create_app(
        services,
        session_key=session_key(settings.session_key_file),
        secure=tls is not None or (public is not None and public.scheme == "https"),
        max_age=int(settings.session_hours * 3600),
        public_origin=str(public.origin()) if public is not None else None,
    )
    ssl_context = tls.ssl_context() if tls is not None else None
    site = await start_site(app, settings.http_addr, shutdown_timeout=5, ssl_context=ssl_context)
    return RunningConsole(site, services, "https" if tls is not None else "http")


async def serve(settings: ConsoleSettings) -> None:
    """Runs until SIGINT or SIGTERM."""
    running = await start_console(settings)
    host = settings.http_addr.rsplit(":", 1)[0]
    log.info(
        "console on %s://%s:%d (subscriptions %s, dispatcher %s)",
        running.scheme,
        host,
        running.port,
        settings.subscriptions_addr,
        settings.dispatcher_addr,
    )
    await wait_for_shutdown_signal()
    await running.stop()
