"""CallerService, served by both services: what the call's bearer token allows, so a tool
(the console, a CLI) offers only what the token may do."""

from __future__ import annotations

from typing import Any

import grpc

from service_common.auth import TokenStore
from service_common.grpc_errors import translate_errors
from webhooks.v1 import caller_service_pb2 as pb
from webhooks.v1 import caller_service_pb2_grpc as pb_grpc

__all__ = ["CALLER_SERVICE", "CallerServicer"]

Context = grpc.aio.ServicerContext[Any, Any]
CALLER_SERVICE = pb.DESCRIPTOR.services_by_name["CallerService"]


class CallerServicer(pb_grpc.CallerServiceServicer):
    """Answers from `tokens`, the tokens file of the service serving it."""

    def __init__(self, *, tokens: TokenStore) -> None:
        self._tokens = tokens

    @translate_errors
    async def GetCaller(
        self, request: pb.GetCallerRequest, context: Context
    ) -> pb.GetCallerResponse:
        # Any valid token may ask: it needs no scope to learn its own.
        caller = self._tokens.authenticate(context.invocation_metadata())
        return pb.GetCallerResponse(
            tenant=caller.tenant, scopes=sorted(scope.value for scope in caller.scopes)
        )
