"""What a client reads in a failed call's status details: the other side of
`grpc_errors`, which attaches them (`google.rpc.BadRequest` for a wrong field)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["field_violations"]


def field_violations(call: grpc.Call) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest (field, description) pairs a service attached to a failed
    call, in order; none when it attached no details, or details that contradict its status.

    `call` is a failed call of either API: a sync `grpc.RpcError` or a `grpc.aio.AioRpcError`.
    """
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details that contradict the status: ignore them
        return []
    if status is None:
        return []
    found: list[tuple[str, str]] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found.extend((v.field, v.description) for v in bad_request.field_violations)
    return found
