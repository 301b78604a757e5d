"""The console's only way to the platform: the generated gRPC stubs of both services.

`Services` holds one channel to each service for the whole process; `Services.calls(token)`
gives the stubs and the metadata that carries one operator's token on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message

from console.settings import ConsoleSettings
from service_common.tls import client_tls
from webhooks.v1 import caller_service_pb2_grpc as caller_grpc
from webhooks.v1 import dispatcher_service_pb2_grpc as dispatcher_grpc
from webhooks.v1 import subscription_service_pb2_grpc as subscription_grpc

if TYPE_CHECKING:
    from webhooks.v1.caller_service_pb2_grpc import CallerServiceAsyncStub
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub

__all__ = ["Calls", "Services"]

Metadata = tuple[tuple[str, str], ...]
Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


@dataclass(frozen=True)
class Calls:
    """The stubs, and what every call passes: the operator's token and a deadline."""

    subscriptions: SubscriptionServiceAsyncStub
    dispatcher: DispatcherServiceAsyncStub
    subscriptions_caller: CallerServiceAsyncStub
    dispatcher_caller: CallerServiceAsyncStub
    metadata: Metadata = field(repr=False)
    timeout: float

    async def __call__(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Request, Response], request: Request
    ) -> Response:
        """Calls `method` (a stub's, e.g. `calls.dispatcher.GetDelivery`) with the token."""
        return await method(request, metadata=self.metadata, timeout=self.timeout)


class Services:
    """One channel to each service (TLS when `CONSOLE_GRPC_CA_FILE` is set)."""

    def __init__(self, settings: ConsoleSettings) -> None:
        tls = client_tls(
            ca_file=settings.grpc_ca_file,
            cert_file=settings.grpc_cert_file,
            key_file=settings.grpc_key_file,
            names=("CONSOLE_GRPC_CA_FILE", "CONSOLE_GRPC_CERT_FILE", "CONSOLE_GRPC_KEY_FILE"),
        )
        credentials = tls.grpc_credentials() if tls is not None else None
        self.subscriptions_addr = settings.subscriptions_addr
        self.dispatcher_addr = settings.dispatcher_addr
        self._timeout = settings.call_timeout_seconds
        self._subscriptions = _channel(settings.subscriptions_addr, credentials)
        self._dispatcher = _channel(settings.dispatcher_addr, credentials)

    def calls(self, token: str) -> Calls:
        return Calls(
            subscriptions=subscription_grpc.SubscriptionServiceStub(self._subscriptions),
            dispatcher=dispatcher_grpc.DispatcherServiceStub(self._dispatcher),
            subscriptions_caller=caller_grpc.CallerServiceStub(self._subscriptions),
            dispatcher_caller=caller_grpc.CallerServiceStub(self._dispatcher),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=self._timeout,
        )

    async def close(self) -> None:
        await self._subscriptions.close(None)
        await self._dispatcher.close(None)


def _channel(addr: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(addr)
    return grpc.aio.secure_channel(addr, credentials)
