"""Prometheus metrics both services share: per-RPC counts and latency, and the endpoint.

Each running service has a registry of its own (several may share a process in tests);
`serve_metrics` exposes it at `http://<addr>/metrics` (https with TLS settings). The RPC
metrics have the names and labels of go-grpc-prometheus, so existing dashboards work
unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from service_common.errors import StoreUnavailable
from service_common.tls import ServerTls

__all__ = ["GrpcServerMetrics", "MetricsEndpoint", "read_database", "serve_metrics"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.aio.ServerInterceptor
# Up to a minute: streams that outlive it (watches, long publishing runs) land in +Inf.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)


class GrpcServerMetrics(ServerInterceptor):
    """Counts every call by service, method and status code, and times it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self._started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", labels, registry=registry
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED
            return handler  # type: ignore[return-value]
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler.unary_unary is not None:
            labels = ("unary", service, method)
            return handler._replace(unary_unary=self._unary(handler.unary_unary, labels))  # type: ignore[attr-defined,no-any-return]
        if handler.unary_stream is not None:
            labels = ("server_stream", service, method)
            return handler._replace(unary_stream=self._streaming(handler.unary_stream, labels))  # type: ignore[attr-defined,no-any-return]
        if handler.stream_stream is not None:
            labels = ("bidi_stream", service, method)
            return handler._replace(stream_stream=self._streaming(handler.stream_stream, labels))  # type: ignore[attr-defined,no-any-return]
        labels = ("client_stream", service, method)
        return handler._replace(stream_unary=self._unary(handler.stream_unary, labels))  # type: ignore[attr-defined,no-any-return]

    def _unary(self, behavior: Any, labels: tuple[str, str, str]) -> Any:
        async def observed(request: Any, context: Context) -> Any:
            with self._observing(labels, context):
                return await behavior(request, context)

        return observed

    def _streaming(self, behavior: Any, labels: tuple[str, str, str]) -> Any:
        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            with self._observing(labels, context):
                async for response in behavior(request, context):
                    yield response

        return observed

    @contextlib.contextmanager
    def _observing(self, labels: tuple[str, str, str], context: Context) -> Iterator[None]:
        """Counts the call's start, and its status code and duration when it ends."""
        self._started.labels(*labels).inc()
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            yield
            code = _status(context, grpc.StatusCode.OK)
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = _status(context, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            self._finish(labels, code, started)

    def _finish(self, labels: tuple[str, str, str], code: grpc.StatusCode, started: float) -> None:
        self._seconds.labels(*labels).observe(time.perf_counter() - started)
        self._handled.labels(*labels, code.name).inc()


def _status(context: Context, otherwise: grpc.StatusCode) -> grpc.StatusCode:
    """The code the servicer set (by `abort` or `set_code`), else `otherwise`."""
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    # Before a status is set the context answers None; some grpc versions answer an int.
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return otherwise


def read_database(read: Callable[[], T], what: str) -> tuple[GaugeMetricFamily, T | None]:
    """For a collector reading the database at scrape time: `webhooks_database_up` and
    what `read` returned, or None when the database could not be read. A scrape must
    answer even then, with the database marked down."""
    up = GaugeMetricFamily("webhooks_database_up", f"1 when the last scrape could read {what}.")
    try:
        value = read()
    except Exception as error:
        if not isinstance(error, StoreUnavailable):
            log.exception("could not read the database for metrics")
        up.add_metric([], 0)
        return up, None
    up.add_metric([], 1)
    return up, value


@dataclass
class MetricsEndpoint:
    """A running `/metrics` endpoint; `port` is the one bound (useful with port 0)."""

    server: WSGIServer | None

    @property
    def port(self) -> int | None:
        return None if self.server is None else self.server.server_port

    def close(self) -> None:
        """Stops serving, without waiting: the server notices within its poll interval
        (half a second), which a service stopping, or a test, need not sit through."""
        server = self.server
        if server is None:
            return

        def stop() -> None:
            server.shutdown()
            server.server_close()

        threading.Thread(target=stop, name="stop metrics endpoint", daemon=True).start()


def serve_metrics(
    registry: CollectorRegistry, addr: str, tls: ServerTls | None = None
) -> MetricsEndpoint:
    """Serves `registry` on `addr` (host:port) in a thread; an empty `addr` serves nothing.

    With `tls` the endpoint serves HTTPS only (TLS 1.2 or later), and under mutual TLS
    refuses scrapers without a certificate of the client CA.
    """
    if not addr:
        return MetricsEndpoint(None)
    host, _, port = addr.rpartition(":")
    if tls is None:
        server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        return MetricsEndpoint(server)
    server, _thread = start_http_server(
        int(port),
        addr=host.strip("[]"),
        registry=registry,
        certfile=str(tls.cert_file),
        keyfile=str(tls.key_file),
        client_cafile=str(tls.client_ca_file) if tls.client_ca_file is not None else None,
        client_auth_required=tls.mutual,
        tls_min_version=ssl.TLSVersion.TLSv1_2,
    )
    # prometheus_client handshakes in its accept loop, where one client that connects and
    # sends nothing would stall every scrape. Left to the first read, the handshake happens in
    # that request's own thread instead; its failures (plaintext, an unknown client
    # certificate) were dropped silently by the accept loop and are here too.
    # An attribute of every SSLSocket, read by its accept(), that the type stubs omit.
    cast(ssl.SSLSocket, server.socket).do_handshake_on_connect = False  # type: ignore[attr-defined]
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    return MetricsEndpoint(server)
