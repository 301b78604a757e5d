"""Assembly and lifetime of the dispatcher: gRPC API, subscription follower, delivery
worker, and the pruner of old events."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf import field_mask_pb2
from sqlalchemy.engine import Engine

from dispatcher_service.activity import ActivityWindow
from dispatcher_service.activity_reader import ActivityReader, QueueStatsCache
from dispatcher_service.curl_sender import CurlSender
from dispatcher_service.database import create_engine, migrate
from dispatcher_service.deliveries import DeliveryLog
from dispatcher_service.http_api import create_app
from dispatcher_service.http_sender import HttpSender
from dispatcher_service.ingest import Ingestor
from dispatcher_service.keyring import KeyRing
from dispatcher_service.metrics import DispatcherMetrics, QueueCollector
from dispatcher_service.pruner import Pruner
from dispatcher_service.pruning import EventPruner
from dispatcher_service.rate_limit import TenantRateLimiter
from dispatcher_service.retention import RetentionPolicy
from dispatcher_service.retry import DisablePolicy, RetrySchedule
from dispatcher_service.sending import Timeouts
from dispatcher_service.servicer import DispatcherServicer
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.ssrf import TargetPolicy
from dispatcher_service.store import DeliveryStore
from dispatcher_service.subscription_follower import SubscriptionFollower
from dispatcher_service.worker import DeliveryWorker, Disabler, WorkerLimits
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
from service_common.http_site import HttpSite, start_site
from service_common.lifecycle import wait_for_shutdown_signal
from service_common.metrics import MetricsEndpoint, serve_metrics
from service_common.ports import check_free
from service_common.tls import ClientTls, client_tls, server_tls_of, tls_note
from service_common.tracing import client_interceptors
from webhook_contracts import load_registry
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as subscription_pb

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub
else:
    from webhooks.v1.subscription_service_pb2_grpc import (
        SubscriptionServiceStub as SubscriptionServiceAsyncStub,
    )

__all__ = ["RunningDispatcher", "create_server", "new_pruner", "serve"]

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DispatcherService"].full_name
USER_AGENT = "webhooks-dispatcher/0.1 (+https://github.com/webhooks)"


@dataclass
class RunningDispatcher:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    engine: Engine
    follower: SubscriptionFollower
    worker: DeliveryWorker
    sender: CurlSender | HttpSender
    channel: grpc.aio.Channel
    keys: KeyRing
    http: HttpSite
    metrics: MetricsEndpoint
    pruner: Pruner | None = None

    @property
    def http_port(self) -> int:
        return self.http.port

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.http.stop()
        await self.server.stop(grace)
        await self.worker.stop(grace or 0.0)
        if self.pruner is not None:
            await self.pruner.stop()
        await self.follower.stop()
        await self.sender.aclose()
        await self.channel.close(None)
        self.metrics.close()
        await dispose_when_returned(self.engine)


def _platform_token(settings: DispatcherSettings) -> str:
    if settings.subscriptions_token_file is None:
        raise ValueError("DISPATCHER_SUBSCRIPTIONS_TOKEN_FILE is required")
    return Path(settings.subscriptions_token_file).read_text().strip()


def _subscriptions_tls(settings: DispatcherSettings) -> ClientTls | None:
    return client_tls(
        ca_file=settings.subscriptions_tls_ca_file,
        cert_file=settings.subscriptions_tls_cert_file,
        key_file=settings.subscriptions_tls_key_file,
        names=(
            "DISPATCHER_SUBSCRIPTIONS_TLS_CA_FILE",
            "DISPATCHER_SUBSCRIPTIONS_TLS_CERT_FILE",
            "DISPATCHER_SUBSCRIPTIONS_TLS_KEY_FILE",
        ),
    )


def _disabler(channel: grpc.aio.Channel, token: str) -> Disabler:
    stub = SubscriptionServiceAsyncStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)

    async def disable(subscription_id: str, reason: str) -> None:
        log.warning("disabling subscription %s: %s", subscription_id, reason)
        await stub.UpdateSubscription(
            subscription_pb.UpdateSubscriptionRequest(
                subscription=subscription_pb.Subscription(
                    id=subscription_id, enabled=False, disabled_reason=reason[:1024]
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["enabled", "disabled_reason"]),
            ),
            metadata=metadata,
            timeout=10,
        )

    return disable


async def create_server(settings: DispatcherSettings) -> RunningDispatcher:
    """Migrates, loads keys and contracts, follows subscriptions, starts serving and delivering.

    With `tls_cert_file` and `tls_key_file` it serves TLS only (gRPC, HTTP, metrics); with
    `subscriptions_tls_ca_file` it speaks TLS to the subscription service. A TLS setting that
    is incomplete or names a bad file raises TlsConfigError before anything starts, and so
    does a listening address already in use (AddressInUse, naming its setting).
    """
    check_free(
        {
            "DISPATCHER_GRPC_ADDR": settings.grpc_addr,
            "DISPATCHER_HTTP_ADDR": settings.http_addr,
            "DISPATCHER_METRICS_ADDR": settings.metrics_addr,
        }
    )
    tls = server_tls_of(settings)
    upstream_tls = _subscriptions_tls(settings)
    upstream_credentials = upstream_tls.grpc_credentials() if upstream_tls is not None else None
    tokens = (
        TokenStore.from_file(settings.auth_tokens_file)
        if settings.auth_tokens_file
        else TokenStore()
    )
    if not len(tokens):
        log.warning("no tokens configured (DISPATCHER_AUTH_TOKENS_FILE): every call is refused")
    platform_token = _platform_token(settings)
    registry = load_registry()
    engine = create_engine(settings.database_url)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, engine)
    keys = await asyncio.to_thread(
        KeyRing.open,
        settings.signing_keys_dir,
        retired_key_retention=timedelta(days=settings.retired_key_retention_days),
    )
    store = DeliveryStore(engine)
    metrics = DispatcherMetrics()
    metrics.registry.register(QueueCollector(lambda now: store.queue_stats(now=now)))
    follower = SubscriptionFollower(
        settings.subscriptions_addr, platform_token, credentials=upstream_credentials
    )
    follower.start()
    # A channel of its own for the few calls that disable failing subscriptions.
    interceptors = client_interceptors(settings.tracing_exporter)
    channel = (
        grpc.aio.insecure_channel(settings.subscriptions_addr, interceptors=interceptors)
        if upstream_credentials is None
        else grpc.aio.secure_channel(
            settings.subscriptions_addr, upstream_credentials, interceptors=interceptors
        )
    )
    sender = _new_sender(settings)
    # One per process: what its worker records, by second and tenant, for GetDeliveryActivity.
    activity = ActivityWindow()
    worker = DeliveryWorker(
        store=store,
        routes=follower,
        sender=sender,
        signer=keys,
        disable=_disabler(channel, platform_token),
        schedule=RetrySchedule.parse(settings.retry_schedule),
        disable_policy=(
            DisablePolicy(
                consecutive_failures=settings.disable_after_failures,
                min_failing_seconds=settings.disable_after_seconds,
            )
            if settings.disable_after_failures
            else None
        ),
        limits=WorkerLimits(
            max_in_flight=settings.max_concurrent_deliveries,
            per_endpoint=settings.max_concurrent_per_endpoint,
            poll_interval=settings.poll_interval_seconds,
            lease=timedelta(seconds=settings.lease_seconds),
        ),
        user_agent=USER_AGENT,
        metrics=metrics,
        activity=activity,
    )
    limiter = (
        TenantRateLimiter(
            rate=settings.publish_rate_per_tenant, burst=settings.publish_burst_per_tenant
        )
        if settings.publish_rate_per_tenant > 0
        else None
    )
    ingestor = Ingestor(
        store=store,
        registry=registry,
        routes=follower,
        worker=worker,
        metrics=metrics,
        limiter=limiter,
    )
    server = new_server(metrics=metrics.registry, tracing_exporter=settings.tracing_exporter)
    add_servicer(
        server,
        DispatcherServicer(
            ingestor=ingestor,
            log=DeliveryLog(store=store, on_rescheduled=worker.wake),
            keys=keys,
            tokens=tokens,
            activity=ActivityReader(
                window=activity,
                queue=QueueStatsCache(
                    lambda now, tenant: store.queue_stats(now=now, tenant=tenant)
                ),
            ),
        ),
        pb.DESCRIPTOR.services_by_name["DispatcherService"],
    )
    add_servicer(server, CallerServicer(tokens=tokens), CALLER_SERVICE)
    health = await add_health_and_reflection(
        server, service_names=[SERVICE_NAME, CALLER_SERVICE.full_name]
    )
    port = add_port(server, settings.grpc_addr, tls)
    http = await start_site(
        create_app(ingestor=ingestor, keys=keys, tokens=tokens, registry=registry),
        settings.http_addr,
        shutdown_timeout=settings.shutdown_grace_seconds,
        ssl_context=tls.ssl_context() if tls is not None else None,
    )
    await server.start()
    metrics_endpoint = serve_metrics(metrics.registry, settings.metrics_addr, tls)
    if settings.deliver:
        worker.start()
    pruner = new_pruner(engine, settings, metrics, store=store)
    if pruner is not None:
        pruner.start()
    return RunningDispatcher(
        server=server,
        port=port,
        health=health,
        engine=engine,
        follower=follower,
        worker=worker,
        sender=sender,
        channel=channel,
        keys=keys,
        http=http,
        metrics=metrics_endpoint,
        pruner=pruner,
    )


async def serve(settings: DispatcherSettings) -> None:
    """Runs until SIGINT or SIGTERM, then stops gracefully."""
    running = await create_server(settings)
    host = settings.grpc_addr.rsplit(":", 1)[0]
    scheme = "https" if settings.tls_cert_file is not None else "http"
    log.info("dispatcher listening on %s:%d%s", host, running.port, tls_note(settings))
    http_host = settings.http_addr.rpartition(":")[0]
    log.info("dispatcher HTTP surface on %s://%s:%d", scheme, http_host, running.http_port)
    if running.metrics_port is not None:
        metrics_host = settings.metrics_addr.rpartition(":")[0]
        log.info(
            "dispatcher metrics on %s://%s:%d/metrics", scheme, metrics_host, running.metrics_port
        )
    await wait_for_shutdown_signal()
    log.info("shutting down")
    await running.stop(settings.shutdown_grace_seconds)


def new_pruner(
    engine: Engine,
    settings: DispatcherSettings,
    metrics: DispatcherMetrics | None,
    *,
    store: DeliveryStore | None = None,
) -> Pruner | None:
    """The pruner the retention settings ask for; None when they keep everything."""
    policy = RetentionPolicy.of(settings)
    if not policy.active:
        return None
    return Pruner(
        pruner=EventPruner(engine, write_turn=store.write_turn if store else None),
        policy=policy,
        interval=settings.prune_interval_seconds,
        batch_size=settings.prune_batch_size,
        metrics=metrics,
    )


def _new_sender(settings: DispatcherSettings) -> CurlSender | HttpSender:
    """The sender `DISPATCHER_HTTP_CLIENT` names; the worker keeps to the same limits."""
    kind = CurlSender if settings.http_client == "curl" else HttpSender
    return kind(
        policy=TargetPolicy(allowed_networks=settings.allowed_target_networks),
        timeouts=Timeouts(
            connect=settings.connect_timeout_seconds, total=settings.attempt_timeout_seconds
        ),
        per_host_limit=settings.max_concurrent_per_endpoint,
        total_limit=settings.max_concurrent_deliveries,
        user_agent=USER_AGENT,
    )
