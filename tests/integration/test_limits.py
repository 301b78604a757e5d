"""Every input limit, on real servers, just past its bound: the status it answers and the
field it names (google.rpc.BadRequest), or RESOURCE_EXHAUSTED for sizes grpc enforces."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from dispatcher_service.http_api import (
    MAX_HEADER_FIELD_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE_BYTES,
)
from dispatcher_service.ingest import (
    MAX_BATCH_EVENTS,
    MAX_DETAILS_BYTES,
    MAX_MESSAGE_ID_LENGTH,
    MAX_USER_FIELD_LENGTH,
)
from dispatcher_service.server import RunningDispatcher
from service_common.grpc_server import MAX_MESSAGE_BYTES, MAX_METADATA_BYTES
from subscription_service.server import RunningServer
from subscription_service.validation import (
    MAX_DESCRIPTION_LENGTH,
    MAX_MESSAGE_TYPES,
    MAX_URL_LENGTH,
)
from tests.conftest import Tokens
from tests.integration.conftest import auth, field_violations
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub


@pytest.fixture
def backend() -> str:
    """SQLite only: what is checked here does not depend on the database."""
    return "sqlite"


NOTE = "event.note.created.v1"
TIMEOUT = 5.0
Code = grpc.StatusCode


def subscription(**fields: Any) -> sub_pb.Subscription:
    given: dict[str, Any] = {"url": "https://hooks.example.com/in", "message_types": [NOTE]}
    return sub_pb.Subscription(**{**given, **fields})


def event(message_id: str = "m-1", **fields: Any) -> pb.Event:
    given: dict[str, Any] = {"message_type": NOTE, "details": "{}"}
    return pb.Event(message_id=message_id, **{**given, **fields})


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# --- gRPC: sizes grpc enforces ------------------------------------------------------------


async def test_a_message_past_max_message_bytes_is_resource_exhausted_on_both_services(
    stub: Stub, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    huge = "x" * (MAX_MESSAGE_BYTES + 1)
    create = stub.CreateSubscription(
        sub_pb.CreateSubscriptionRequest(subscription=subscription(description=huge)),
        metadata=auth(tokens.acme),
        timeout=TIMEOUT,
    )
    publish = dispatcher_stub.PublishEvent(
        pb.PublishEventRequest(event=event(details=huge)),
        metadata=auth(tokens.acme_publisher),
        timeout=TIMEOUT,
    )
    for error in [await refused(create), await refused(publish)]:
        assert error.code() == Code.RESOURCE_EXHAUSTED, error.details()
        assert "larger than max" in (error.details() or "")


async def test_a_stream_message_past_max_message_bytes_is_resource_exhausted(
    dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        yield pb.PublishEventsRequest(events=[event(details="x" * (MAX_MESSAGE_BYTES + 1))])

    call = dispatcher_stub.PublishEvents(
        requests(), metadata=auth(tokens.acme_publisher), timeout=TIMEOUT
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == Code.RESOURCE_EXHAUSTED


async def test_a_message_just_under_the_limit_reaches_the_service(
    stub: Stub, tokens: Tokens
) -> None:
    """Below MAX_MESSAGE_BYTES grpc passes it on, and the service names the field."""
    error = await refused(
        stub.CreateSubscription(
            sub_pb.CreateSubscriptionRequest(
                subscription=subscription(description="x" * (MAX_MESSAGE_BYTES - 1024))
            ),
            metadata=auth(tokens.acme),
            timeout=TIMEOUT,
        )
    )
    assert error.code() == Code.INVALID_ARGUMENT
    assert "subscription.description" in field_violations(error)


@pytest.mark.parametrize("service", ["subscriptions", "dispatcher"])
async def test_metadata_past_max_metadata_bytes_is_refused_and_the_server_goes_on(
    service: str, stub: Stub, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    padding = (("x-padding", "p" * (MAX_METADATA_BYTES + 1)),)
    if service == "subscriptions":

        def call(metadata: Any) -> Any:
            return stub.ListSubscriptions(
                sub_pb.ListSubscriptionsRequest(), metadata=metadata, timeout=TIMEOUT
            )
    else:

        def call(metadata: Any) -> Any:
            return dispatcher_stub.ListSigningKeys(
                pb.ListSigningKeysRequest(), metadata=metadata, timeout=TIMEOUT
            )

    for _ in range(3):  # every time, not now and then (soft and hard limit are one)
        error = await refused(call((*auth(tokens.acme), *padding)))
        assert error.code() == Code.RESOURCE_EXHAUSTED, (error.code(), error.details())
        assert tokens.acme not in (error.details() or "")
    # Just under the limit, with the token, is served.
    under = (("x-padding", "p" * (MAX_METADATA_BYTES // 2)),)
    await call((*auth(tokens.acme), *under))


# --- gRPC: limits the services enforce, naming the field ------------------------------------


async def test_subscription_limits_name_their_fields(stub: Stub, tokens: Tokens) -> None:
    secret = "whsec_" + base64.b64encode(bytes(65)).decode()
    cases = {
        "subscription.url": subscription(url="https://hooks.example.com/" + "a" * MAX_URL_LENGTH),
        "subscription.description": subscription(description="d" * (MAX_DESCRIPTION_LENGTH + 1)),
        "subscription.message_types": subscription(
            message_types=[f"event.kind{n}.created.v1" for n in range(MAX_MESSAGE_TYPES + 1)]
        ),
        "subscription.secret": subscription(secret=secret),
        "subscription.tenant": subscription(tenant="t" * 65),
    }
    for field, given in cases.items():
        token = tokens.operator if field == "subscription.tenant" else tokens.acme
        error = await refused(
            stub.CreateSubscription(
                sub_pb.CreateSubscriptionRequest(subscription=given),
                metadata=auth(token),
                timeout=TIMEOUT,
            )
        )
        assert error.code() == Code.INVALID_ARGUMENT, (field, error.details())
        assert field in field_violations(error), (field, field_violations(error))
        assert secret not in (error.details() or "")


async def test_page_sizes_past_their_maximum_name_page_size(
    stub: Stub, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    listing = stub.ListSubscriptions(
        sub_pb.ListSubscriptionsRequest(page_size=1001), metadata=auth(tokens.acme)
    )
    deliveries = dispatcher_stub.ListDeliveries(
        pb.ListDeliveriesRequest(page_size=1001), metadata=auth(tokens.acme_deliveries)
    )
    for error in [await refused(listing), await refused(deliveries)]:
        assert error.code() == Code.INVALID_ARGUMENT
        assert "page_size" in field_violations(error)


async def test_event_limits_name_their_fields(
    dispatcher: RunningDispatcher, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    long_user = pb.EventUser(
        id="u" * (MAX_USER_FIELD_LENGTH + 1), pool_id="p", originator="o" * 2000
    )
    cases: dict[str, tuple[str, pb.Event]] = {
        "message_id": (tokens.acme_publisher, event("m" * (MAX_MESSAGE_ID_LENGTH + 1))),
        "details": (
            tokens.acme_publisher,
            event(details='{"pad": "' + "x" * MAX_DETAILS_BYTES + '"}'),
        ),
        "user.id": (tokens.acme_publisher, event(user=long_user)),
        "user.originator": (tokens.acme_publisher, event(user=long_user)),
        "tenant": (tokens.platform, event(tenant="t" * 65)),
    }
    for field, (token, given) in cases.items():
        error = await refused(
            dispatcher_stub.PublishEvent(
                pb.PublishEventRequest(event=given), metadata=auth(token), timeout=TIMEOUT
            )
        )
        assert error.code() == Code.INVALID_ARGUMENT, (field, error.details())
        assert field in field_violations(error), (field, field_violations(error))


async def test_a_batch_past_max_batch_events_is_refused_per_event_and_the_stream_goes_on(
    dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    too_many = [event(f"b-{n}") for n in range(MAX_BATCH_EVENTS + 1)]

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        yield pb.PublishEventsRequest(events=too_many)
        yield pb.PublishEventsRequest(events=[event("after")])

    call = dispatcher_stub.PublishEvents(
        requests(), metadata=auth(tokens.acme_publisher), timeout=TIMEOUT
    )
    answers = [list(response.results) async for response in call]
    assert len(answers) == 2
    assert len(answers[0]) == MAX_BATCH_EVENTS + 1
    assert {r.error.code for r in answers[0]} == {"INVALID_ARGUMENT"}
    assert {v.field for v in answers[0][0].error.field_violations} == {"events"}
    assert answers[1][0].outcome == pb.PublishResult.OUTCOME_ACCEPTED


# --- HTTP: header sizes aiohttp enforces -------------------------------------------------


async def _raw_http(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


def _request(target: bytes = b"/openapi.json", headers: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"


async def test_http_header_limits_answer_400_before_any_handler(
    dispatcher: RunningDispatcher, subscription_server: RunningServer
) -> None:
    port = dispatcher.http_port
    ok = await _raw_http(port, _request())
    assert ok.startswith(b"HTTP/1.1 200")
    cases = {
        "request line": _request(b"/openapi.json?" + b"q" * MAX_REQUEST_LINE_BYTES),
        "header field": _request(
            headers=b"X-Big: " + b"v" * (MAX_HEADER_FIELD_BYTES + 1) + b"\r\n"
        ),
        "header count": _request(
            headers=b"".join(b"X-H%d: 1\r\n" % n for n in range(MAX_HEADERS + 1))
        ),
    }
    for name, head in cases.items():
        answer = await _raw_http(port, head)
        # aiohttp's own refusal: 400 for all three (it has no 414 or 431).
        assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), (name, answer[:200])
    # Within the limits, the same request is served.
    fine = _request(headers=b"X-Big: " + b"v" * (MAX_HEADER_FIELD_BYTES - 100) + b"\r\n")
    assert (await _raw_http(port, fine)).startswith(b"HTTP/1.1 200")
