"""gRPC server plumbing both services share: health checking, reflection, limits, metrics
and tracing of every call, TLS ports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# The published type stubs predate the asyncio health servicer.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from service_common import reflection_v1
from service_common.metrics import GrpcServerMetrics
from service_common.tls import ServerTls
from service_common.tracing import Exporter, server_interceptors

__all__ = [
    "MAX_MESSAGE_BYTES",
    "HealthServicer",
    "add_health_and_reflection",
    "add_port",
    "new_server",
]

HealthServicer = Any

# Large enough for a batch of events, small enough that one caller cannot exhaust memory.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Request metadata (headers) of one call: a bearer token and tracing headers fit many times.
MAX_METADATA_BYTES = 16 * 1024


def new_server(*, metrics: CollectorRegistry, tracing_exporter: Exporter) -> grpc.aio.Server:
    """A server that counts every call into `metrics`, and traces it when tracing is on."""
    return grpc.aio.server(
        interceptors=[*server_interceptors(tracing_exporter), GrpcServerMetrics(metrics)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Soft and hard limit alike, so that past it every call is refused, not some.
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )


def add_port(server: grpc.aio.Server, addr: str, tls: ServerTls | None) -> int:
    """Listens on `addr` (TLS only when `tls` is given); the bound port, OSError if none."""
    try:
        if tls is None:
            port = server.add_insecure_port(addr)
        else:
            port = server.add_secure_port(addr, tls.grpc_credentials())
    except RuntimeError:  # gRPC's word for any failed bind; it says no more
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {addr}")
    return port


async def add_health_and_reflection(
    server: grpc.aio.Server, *, service_names: Iterable[str]
) -> HealthServicer:
    """Registers health checking (each service SERVING) and server reflection (v1 and the
    older v1alpha, which some clients still ask for).

    Call `enter_graceful_shutdown()` on the returned servicer before stopping, so load
    balancers see NOT_SERVING while calls in flight finish.
    """
    names = tuple(service_names)
    health_servicer: HealthServicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    listed = (*names, health.SERVICE_NAME, reflection_v1.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(listed, server)
    reflection_v1.enable_server_reflection(listed, server)
    return health_servicer
