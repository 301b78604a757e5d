"""OpenTelemetry tracing, off unless `*_TRACING_EXPORTER` turns it on.

`otlp` sends spans to the collector the standard `OTEL_EXPORTER_OTLP_*` variables name
(gRPC, `http://localhost:4317` by default); `console` prints them, for a first look.
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are honoured as everywhere else.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

__all__ = ["client_interceptors", "configure_tracing", "server_interceptors", "tracing_enabled"]

Exporter = Literal["none", "otlp", "console"]
_enabled = False


def tracing_enabled() -> bool:
    """Whether spans go anywhere: hot paths skip making spans nobody records."""
    return _enabled


def configure_tracing(exporter: Exporter, service_name: str) -> TracerProvider | None:
    """Installs the process's tracer provider; call `shutdown()` on it before exiting so
    the last spans are sent. None when tracing is off."""
    if exporter == "none":
        return None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
    trace.set_tracer_provider(provider)
    global _enabled
    _enabled = True
    return provider


def _exporter(exporter: Exporter) -> SpanExporter:
    if exporter == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def server_interceptors(exporter: Exporter) -> list[Any]:
    """A server span per call (with the caller's trace as parent), when tracing is on."""
    return [] if exporter == "none" else [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def client_interceptors(exporter: Exporter) -> list[Any]:
    """A client span per outgoing call, carrying the trace to the server, when on."""
    return [] if exporter == "none" else list(aio_client_interceptors())  # type: ignore[no-untyped-call]
