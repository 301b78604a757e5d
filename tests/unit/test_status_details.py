"""Field violations read back from a failed call, as the CLI and the console read them."""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service_common.status_details import field_violations


def _failed(
    status: status_pb2.Status | None,
    *,
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
    other: tuple[tuple[str, str | bytes], ...] = (),
) -> grpc.Call:
    """A failed aio call whose trailing metadata holds `status` (serialized) after `other`."""
    trailing = list(other)
    if status is not None:
        trailing.append(("grpc-status-details-bin", status.SerializeToString()))
    error = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "invalid", None
    )
    return cast(grpc.Call, error)


def _bad_request(*pairs: tuple[str, str]) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=text)
                for field, text in pairs
            ]
        )
    )
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="invalid", details=[detail])


def test_the_bad_request_pairs_are_read_in_order_past_other_metadata() -> None:
    call = _failed(
        _bad_request(("subscription.url", "must be https"), ("x", "y")),
        other=(("other-bin", b"\x00"), ("other", "text")),
    )
    assert field_violations(call) == [("subscription.url", "must be https"), ("x", "y")]


def test_a_call_without_details_has_no_violations() -> None:
    assert field_violations(_failed(None)) == []


def test_details_of_another_kind_are_no_violations() -> None:
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo())
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="invalid", details=[retry])
    assert field_violations(_failed(status)) == []


def test_details_that_contradict_the_status_are_ignored() -> None:
    call = _failed(_bad_request(("url", "bad")), code=grpc.StatusCode.NOT_FOUND)
    assert field_violations(call) == []
