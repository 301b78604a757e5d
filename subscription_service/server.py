"""Assembly and lifetime of the subscription service's gRPC server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

import grpc
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from service_common.auth import TokenStore
from service_common.caller_servicer import CALLER_SERVICE, CallerServicer
from service_common.database import dispose_when_returned
from service_common.grpc_requests import add_servicer
from service_common.grpc_server import (
    HealthServicer,
    add_health_and_reflection,
    add_port,
    new_server,
)
from service_common.lifecycle import wait_for_shutdown_signal
from service_common.metrics import MetricsEndpoint, serve_metrics
from service_common.ports import check_free
from service_common.tls import server_tls_of, tls_note
from subscription_service.change_feed import ChangeFeed
from subscription_service.change_log import ChangeLog
from subscription_service.database import create_engine, migrate
from subscription_service.manager import SubscriptionManager
from subscription_service.metrics import SubscriptionCollector
from subscription_service.servicer import SubscriptionServicer
from subscription_service.settings import SubscriptionSettings
from subscription_service.store import SubscriptionStore
from subscription_service.watch import ChangeHub
from webhook_contracts import known_message_types
from webhooks.v1 import subscription_service_pb2 as pb

__all__ = ["RunningServer", "create_server", "serve"]

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SubscriptionService"].full_name


@dataclass
class RunningServer:
    """A started server, the port it listens on, and how to stop it gracefully."""

    server: grpc.aio.Server
    port: int
    hub: ChangeHub
    feed: ChangeFeed
    health: HealthServicer
    engine: Engine
    metrics: MetricsEndpoint

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        # Watch streams never end by themselves; close them so shutdown does not wait out the grace.
        self.hub.close()
        await self.server.stop(grace)
        await self.feed.stop()
        self.metrics.close()
        await dispose_when_returned(self.engine)


async def create_server(settings: SubscriptionSettings) -> RunningServer:
    """Migrates the database, then starts the server on `settings.grpc_addr`.

    A listening address already in use raises AddressInUse (naming its setting) before
    anything starts.

    With `tls_cert_file` and `tls_key_file` it serves TLS only (gRPC and metrics); a TLS
    setting that is incomplete or names a bad file raises TlsConfigError before anything.
    """
    check_free(
        {
            "SUBSCRIPTIONS_GRPC_ADDR": settings.grpc_addr,
            "SUBSCRIPTIONS_METRICS_ADDR": settings.metrics_addr,
        }
    )
    tls = server_tls_of(settings)
    tokens = (
        TokenStore.from_file(settings.auth_tokens_file)
        if settings.auth_tokens_file
        else TokenStore()
    )
    if not len(tokens):
        log.warning("no tokens configured (SUBSCRIPTIONS_AUTH_TOKENS_FILE): every call is refused")
    engine = create_engine(settings.database_url)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, engine)
    hub = ChangeHub(queue_size=settings.watch_queue_size)
    store, changes = SubscriptionStore(engine), ChangeLog(engine)
    feed = ChangeFeed(
        changes,
        hub,
        poll_seconds=settings.change_poll_seconds,
        retention=timedelta(hours=settings.change_log_retention_hours),
    )
    manager = SubscriptionManager(
        store=store,
        changes=changes,
        feed=feed,
        known_message_types=known_message_types(),
        resume_limit=settings.watch_queue_size,
    )
    registry = CollectorRegistry()
    registry.register(SubscriptionCollector(store.count_by_enabled))
    server = new_server(metrics=registry, tracing_exporter=settings.tracing_exporter)
    add_servicer(
        server,
        SubscriptionServicer(manager=manager, tokens=tokens),
        pb.DESCRIPTOR.services_by_name["SubscriptionService"],
    )
    add_servicer(server, CallerServicer(tokens=tokens), CALLER_SERVICE)
    health_servicer = await add_health_and_reflection(
        server, service_names=[SERVICE_NAME, CALLER_SERVICE.full_name]
    )
    port = add_port(server, settings.grpc_addr, tls)
    await server.start()
    feed.start()
    return RunningServer(
        server=server,
        port=port,
        hub=hub,
        feed=feed,
        health=health_servicer,
        engine=engine,
        metrics=serve_metrics(registry, settings.metrics_addr, tls),
    )


async def serve(settings: SubscriptionSettings) -> None:
    """Runs until SIGINT or SIGTERM, then stops gracefully."""
    running = await create_server(settings)
    host = settings.grpc_addr.rsplit(":", 1)[0]
    log.info("subscription service listening on %s:%d%s", host, running.port, tls_note(settings))
    if running.metrics_port is not None:
        metrics_host = settings.metrics_addr.rpartition(":")[0]
        log.info(
            "subscription service metrics on %s://%s:%d/metrics",
            "https" if settings.tls_cert_file is not None else "http",
            metrics_host,
            running.metrics_port,
        )
    await wait_for_shutdown_signal()
    log.info("shutting down")
    await running.stop(settings.shutdown_grace_seconds)
