"""Fuzzing every RPC of both services over real gRPC, on loopback.

The RPCs come from the descriptors of the generated modules, so a new RPC fails
`test_every_rpc_of_both_services_is_fuzzed` until it has a plan here. Each RPC gets:

- requests generated from its request descriptor: hostile strings (huge, empty, unicode,
  control characters, NUL, path traversal, SQL), integers at their bounds, unknown enum
  values, repeated fields with many elements, bogus field-mask paths, extreme timestamps,
  forged page tokens, and the ids of real subscriptions and deliveries of two tenants;
- raw bytes that are not, or only nearly, a protobuf of the request type;
- calls without a token, with malformed or unknown tokens, with a token lacking the
  scope, and with another tenant's token.

Every call must end before its deadline with success or a deliberate status, never
INTERNAL or UNKNOWN; an INVALID_ARGUMENT names the wrong field (google.rpc.BadRequest);
responses carry neither another tenant's data nor a secret; and both servers still
answer afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2, message_factory, text_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from dispatcher_service.server import RunningDispatcher
from service_common.auth import hash_token
from service_common.grpc_server import MAX_MESSAGE_BYTES
from subscription_service.server import RunningServer
from tests.conftest import Tokens, report_cases
from tests.contracts.contract_samples import DOCUMENTED_VALID_DETAILS
from tests.integration.conftest import Metadata, auth, explore, field_violations
from tests.receiver import Receiver
from webhooks.v1 import caller_service_pb2 as caller_pb
from webhooks.v1 import dispatcher_service_pb2 as dispatcher_pb
from webhooks.v1 import subscription_service_pb2 as subscription_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import (
        DispatcherServiceAsyncStub as DispatcherStub,
    )
    from webhooks.v1.subscription_service_pb2_grpc import (
        SubscriptionServiceAsyncStub as SubscriptionStub,
    )
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import (
        SubscriptionServiceStub as SubscriptionStub,
    )

T = TypeVar("T")
Code = grpc.StatusCode

# Every call gets this deadline; one that is not answered within it is a failure.
CALL_TIMEOUT = 5.0
GENERATED_EXAMPLES = 120
RAW_EXAMPLES = 40
POSTGRES_EXAMPLES = 15

SERVICES = tuple(
    service
    for module in (subscription_pb, dispatcher_pb, caller_pb)
    for service in module.DESCRIPTOR.services_by_name.values()
)
RPCS: dict[str, MethodDescriptor] = {
    method.full_name: method for service in SERVICES for method in service.methods
}

NOTE = "event.note.created.v1"  # valid with empty details
CLAIM_CREATED = "event.claim.created.v1"
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
GLOBEX_PUBLISHER = Tokens.globex_publisher
GLOBEX_DELIVERIES = Tokens.globex_deliveries
ALL_TENANTS = "*"
BROKEN = (Code.INTERNAL, Code.UNKNOWN)

# The range google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
FIRST_SECOND = -62_135_596_800
LAST_SECOND = 253_402_300_799
HUGE = 70_000  # past every length limit of the APIs, including the 64 KiB of event details

TIMESTAMP_RPCS = frozenset({"PublishEvent", "PublishEvents", "RedeliverEvent"})


# --- tokens, seeds and calls ---------------------------------------------------------


@dataclass
class World:
    """Both servers, a channel to each, and what exists in them before the fuzzing: a
    subscription and a delivered event for each of two tenants."""

    tokens: Tokens
    channels: dict[str, grpc.aio.Channel]
    receiver: Receiver
    acme: subscription_pb.Subscription
    globex: subscription_pb.Subscription
    acme_message_id: str = ""
    globex_message_id: str = ""
    acme_delivery_id: str = ""
    globex_delivery_id: str = ""

    def tenant_of(self, token: str) -> str:
        held = self.tokens
        return {
            held.acme: "acme",
            held.acme_reader: "acme",
            held.acme_publisher: "acme",
            held.acme_deliveries: "acme",
            held.globex: "globex",
            GLOBEX_PUBLISHER: "globex",
            GLOBEX_DELIVERIES: "globex",
            held.platform: ALL_TENANTS,
            held.operator: ALL_TENANTS,
        }[token]

    @property
    def subscriptions(self) -> SubscriptionStub:
        return SubscriptionStub(self.channels[SERVICES[0].full_name])

    @property
    def dispatcher(self) -> DispatcherStub:
        return DispatcherStub(self.channels[SERVICES[1].full_name])


def _event(message_id: str, **fields: Any) -> dispatcher_pb.Event:
    return dispatcher_pb.Event(
        message_id=message_id, **{"message_type": NOTE, "details": "{}", **fields}
    )


async def _within(seconds: float, probe: Callable[[], Awaitable[T | None]]) -> T:
    deadline = time.monotonic() + seconds
    while (found := await probe()) is None:
        assert time.monotonic() < deadline, f"not there after {seconds}s"
        await asyncio.sleep(0.05)
    return found


async def _seed_delivery(
    world: World, *, tenant: str, publisher: str, reader: str
) -> tuple[str, str]:
    """Publishes an event that the tenant's subscription receives (once routing has it)."""
    attempt = 0

    async def routed() -> str | None:
        nonlocal attempt
        attempt += 1
        message_id = f"seed-{tenant}-{attempt}"
        published = await world.dispatcher.PublishEvent(
            dispatcher_pb.PublishEventRequest(event=_event(message_id)),
            metadata=auth(publisher),
            timeout=CALL_TIMEOUT,
        )
        return message_id if published.result.deliveries == 1 else None

    message_id = await _within(10, routed)

    async def delivered() -> str | None:
        page = await world.dispatcher.ListDeliveries(
            dispatcher_pb.ListDeliveriesRequest(message_id=message_id),
            metadata=auth(reader),
            timeout=CALL_TIMEOUT,
        )
        return page.deliveries[0].id if page.deliveries else None

    return message_id, await _within(10, delivered)


@pytest.fixture
async def world(
    subscription_server: RunningServer,
    dispatcher: RunningDispatcher,
    receiver: Receiver,
    tokens: Tokens,
) -> AsyncIterator[World]:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{subscription_server.port}") as subscriptions,
        grpc.aio.insecure_channel(f"127.0.0.1:{dispatcher.port}") as deliveries,
    ):
        # CallerService is served by both: fuzzed on the dispatcher's.
        channels = {
            SERVICES[0].full_name: subscriptions,
            SERVICES[1].full_name: deliveries,
            SERVICES[2].full_name: deliveries,
        }
        stub = SubscriptionStub(subscriptions)
        created = {}
        for tenant, token in (("acme", tokens.acme), ("globex", tokens.globex)):
            response = await stub.CreateSubscription(
                subscription_pb.CreateSubscriptionRequest(
                    subscription=subscription_pb.Subscription(
                        url=receiver.url(f"/{tenant}"), message_types=[NOTE], secret=SECRET
                    )
                ),
                metadata=auth(token),
                timeout=CALL_TIMEOUT,
            )
            created[tenant] = response.subscription
        world = World(tokens, channels, receiver, created["acme"], created["globex"])
        world.acme_message_id, world.acme_delivery_id = await _seed_delivery(
            world, tenant="acme", publisher=tokens.acme_publisher, reader=tokens.acme_deliveries
        )
        world.globex_message_id, world.globex_delivery_id = await _seed_delivery(
            world, tenant="globex", publisher=GLOBEX_PUBLISHER, reader=GLOBEX_DELIVERIES
        )
        yield world


@dataclass
class Outcome:
    """How a call ended: its status, its BadRequest field violations, what it streamed."""

    code: grpc.StatusCode
    details: str
    violations: dict[str, str]
    responses: list[Message]
    # The server ended a stream while the client was still writing to it: grpc.aio then
    # replaces the server's status with its own INTERNAL, so the real answer is unknown.
    write_cut_short: bool = False


# The status grpc.aio gives a call whose write failed (the server had ended the call).
CLIENT_WRITE_FAILED = "Internal error from Core"
ATTEMPTS = 3


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def _exchange(call: Any, payloads: Sequence[bytes], responses: list[Message]) -> bool:
    """Writes each request once the previous one is answered: a bidirectional stream of
    these services answers every request with one response, in order. Writing ahead would
    race with a server that ends the call. Returns whether every write went through; the
    status comes from reading, which raises it when the call failed."""
    replies = aiter(call)
    written = True
    for payload in payloads:
        try:
            await call.write(payload)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            written = False
            break
        response = await anext(replies, None)
        if response is None:
            return written
        responses.append(response)
    else:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.done_writing()
    responses += [response async for response in replies]
    return written


async def _invoke(
    world: World, method: MethodDescriptor, payloads: Sequence[bytes], metadata: Metadata
) -> Outcome:
    """Sends serialized requests as they are (a stream gets each as one message). A stream
    the server ended while a request was being written is tried again, a few times."""
    for _ in range(ATTEMPTS):
        outcome = await _invoke_once(world, method, payloads, metadata)
        if not outcome.write_cut_short:
            break
    return outcome


async def _invoke_once(
    world: World, method: MethodDescriptor, payloads: Sequence[bytes], metadata: Metadata
) -> Outcome:
    channel = world.channels[method.containing_service.full_name]
    reply = message_factory.GetMessageClass(method.output_type).FromString
    enough = PLANS[method.full_name].enough
    responses: list[Message] = []
    written = True
    try:
        # The deadline ends the call; the outer limit also catches a client that hangs.
        async with asyncio.timeout(CALL_TIMEOUT + 5):
            if method.client_streaming:
                stream = channel.stream_stream(
                    _path(method), request_serializer=None, response_deserializer=reply
                )(None, metadata=metadata, timeout=CALL_TIMEOUT)
                written = await _exchange(stream, payloads, responses)
            elif method.server_streaming:
                call = channel.unary_stream(
                    _path(method), request_serializer=None, response_deserializer=reply
                )(payloads[0], metadata=metadata, timeout=CALL_TIMEOUT)
                async for response in call:
                    responses.append(response)
                    if enough is not None and enough(response):
                        call.cancel()
                        break
            else:
                unary = channel.unary_unary(
                    _path(method), request_serializer=None, response_deserializer=reply
                )
                responses.append(await unary(payloads[0], metadata=metadata, timeout=CALL_TIMEOUT))
    except grpc.aio.AioRpcError as error:
        cut_short = (
            not written and error.code() == Code.INTERNAL and error.details() == CLIENT_WRITE_FAILED
        )
        return Outcome(
            error.code(), error.details() or "", field_violations(error), responses, cut_short
        )
    except TimeoutError:
        return Outcome(Code.DEADLINE_EXCEEDED, "the client gave up waiting", {}, responses)
    return Outcome(Code.OK, "", {}, responses)


# --- what each RPC is called with ----------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A call with a given token, and the status it must end with."""

    label: str
    token: str
    requests: list[Message]
    expect: grpc.StatusCode
    check: Callable[[Outcome], list[str]] | None = None
    # What is sent instead of `authorization: Bearer <token>`.
    metadata: Metadata | None = None


@dataclass(frozen=True)
class Plan:
    # Tokens the generated requests are sent with; the first one may make `valid` succeed.
    callers: Callable[[World], list[str]]
    # A request the first caller may send (one message per stream element).
    valid: Callable[[World], list[Message]]
    # Calls with a token lacking the scope, or of another tenant.
    probes: Callable[[World], list[Probe]]
    # For a server stream that never ends by itself: the response after which to stop.
    enough: Callable[[Message], bool] | None = None


def _rejected_as(code: str) -> Callable[[Outcome], list[str]]:
    def check(outcome: Outcome) -> list[str]:
        results = [r for response in outcome.responses for r in _results_of(response)]
        wrong = [r for r in results if r.error.code != code]
        if not results or wrong:
            return [f"expected every event rejected with {code}, got {results}"]
        return []

    return check


def _no_deliveries(outcome: Outcome) -> list[str]:
    shown = [
        d.id
        for response in outcome.responses
        if isinstance(response, dispatcher_pb.ListDeliveriesResponse)
        for d in response.deliveries
    ]
    return [f"another tenant's deliveries are listed: {shown}"] if shown else []


def _snapshot_is_complete(response: Message) -> bool:
    """The end of the snapshot, or the start of a resumed watch (a request naming a
    position the log still has): either way the stream has answered and goes on idle."""
    return isinstance(response, subscription_pb.WatchSubscriptionsResponse) and (
        response.change_type
        in (
            subscription_pb.WatchSubscriptionsResponse.CHANGE_TYPE_SNAPSHOT_COMPLETE,
            subscription_pb.WatchSubscriptionsResponse.CHANGE_TYPE_RESUMED,
        )
    )


def _new_subscription(w: World, **fields: Any) -> subscription_pb.CreateSubscriptionRequest:
    return subscription_pb.CreateSubscriptionRequest(
        subscription=subscription_pb.Subscription(
            url=w.receiver.url("/created"), message_types=[NOTE], **fields
        )
    )


def _describe_acme(w: World) -> subscription_pb.UpdateSubscriptionRequest:
    return subscription_pb.UpdateSubscriptionRequest(
        subscription=subscription_pb.Subscription(id=w.acme.id, description="changed"),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
    )


def _publish_batch(message_id: str, **fields: Any) -> dispatcher_pb.PublishEventsRequest:
    return dispatcher_pb.PublishEventsRequest(events=[_event(message_id, **fields)])


def _publish_one(message_id: str, **fields: Any) -> dispatcher_pb.PublishEventRequest:
    return dispatcher_pb.PublishEventRequest(event=_event(message_id, **fields))


_S = "webhooks.v1.SubscriptionService."
_D = "webhooks.v1.DispatcherService."
_C = "webhooks.v1.CallerService."
PLANS: dict[str, Plan] = {
    _S + "CreateSubscription": Plan(
        callers=lambda w: [w.tokens.acme, w.tokens.acme, w.tokens.operator, w.tokens.acme_reader],
        valid=lambda w: [_new_subscription(w)],
        probes=lambda w: [
            Probe(
                "read-only token",
                w.tokens.acme_reader,
                [_new_subscription(w)],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex creates for acme",
                w.tokens.globex,
                [_new_subscription(w, tenant="acme")],
                Code.PERMISSION_DENIED,
            ),
        ],
    ),
    _S + "GetSubscription": Plan(
        callers=lambda w: [w.tokens.acme, w.tokens.operator, w.tokens.globex],
        valid=lambda w: [subscription_pb.GetSubscriptionRequest(id=w.acme.id)],
        probes=lambda w: [
            Probe(
                "publish-only token",
                w.tokens.acme_publisher,
                [subscription_pb.GetSubscriptionRequest(id=w.acme.id)],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex reads acme's",
                w.tokens.globex,
                [subscription_pb.GetSubscriptionRequest(id=w.acme.id)],
                Code.NOT_FOUND,
            ),
        ],
    ),
    _S + "ListSubscriptions": Plan(
        callers=lambda w: [w.tokens.acme, w.tokens.operator, w.tokens.globex],
        valid=lambda w: [subscription_pb.ListSubscriptionsRequest()],
        probes=lambda w: [
            Probe(
                "publish-only token",
                w.tokens.acme_publisher,
                [subscription_pb.ListSubscriptionsRequest()],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex lists acme's",
                w.tokens.globex,
                [subscription_pb.ListSubscriptionsRequest(tenant="acme")],
                Code.PERMISSION_DENIED,
            ),
            # OK, and the tenant check on every response shows nothing of acme.
            Probe(
                "globex lists its own",
                w.tokens.globex,
                [subscription_pb.ListSubscriptionsRequest()],
                Code.OK,
            ),
        ],
    ),
    _S + "UpdateSubscription": Plan(
        callers=lambda w: [w.tokens.acme, w.tokens.operator, w.tokens.globex],
        valid=lambda w: [_describe_acme(w)],
        probes=lambda w: [
            Probe(
                "read-only token", w.tokens.acme_reader, [_describe_acme(w)], Code.PERMISSION_DENIED
            ),
            Probe("globex changes acme's", w.tokens.globex, [_describe_acme(w)], Code.NOT_FOUND),
        ],
    ),
    _S + "DeleteSubscription": Plan(
        callers=lambda w: [w.tokens.acme, w.tokens.operator, w.tokens.globex],
        valid=lambda w: [subscription_pb.DeleteSubscriptionRequest(id=w.acme.id)],
        probes=lambda w: [
            Probe(
                "read-only token",
                w.tokens.acme_reader,
                [subscription_pb.DeleteSubscriptionRequest(id=w.acme.id)],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex deletes acme's",
                w.tokens.globex,
                [subscription_pb.DeleteSubscriptionRequest(id=w.acme.id, etag=w.acme.etag)],
                Code.NOT_FOUND,
            ),
        ],
    ),
    _S + "WatchSubscriptions": Plan(
        callers=lambda w: [w.tokens.acme, w.tokens.platform, w.tokens.operator, w.tokens.globex],
        valid=lambda w: [subscription_pb.WatchSubscriptionsRequest()],
        probes=lambda w: [
            Probe(
                "publish-only token",
                w.tokens.acme_publisher,
                [subscription_pb.WatchSubscriptionsRequest()],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex watches acme",
                w.tokens.globex,
                [subscription_pb.WatchSubscriptionsRequest(tenant="acme")],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex watches its own",
                w.tokens.globex,
                [subscription_pb.WatchSubscriptionsRequest()],
                Code.OK,
            ),
        ],
        enough=_snapshot_is_complete,
    ),
    _D + "PublishEvents": Plan(
        callers=lambda w: [
            w.tokens.acme_publisher,
            w.tokens.acme_publisher,
            w.tokens.platform,
            GLOBEX_PUBLISHER,
        ],
        valid=lambda w: [_publish_batch("fuzz-valid-batch")],
        probes=lambda w: [
            # Whatever concerns a whole batch is answered per event; the stream goes on.
            Probe(
                "deliveries-only token",
                w.tokens.acme_deliveries,
                [_publish_batch("probe-scope")],
                Code.OK,
                _rejected_as("PERMISSION_DENIED"),
            ),
            Probe(
                "acme publishes for globex",
                w.tokens.acme_publisher,
                [_publish_batch("probe-tenant", tenant="globex")],
                Code.OK,
                _rejected_as("PERMISSION_DENIED"),
            ),
        ],
    ),
    _D + "PublishEvent": Plan(
        callers=lambda w: [
            w.tokens.acme_publisher,
            w.tokens.acme_publisher,
            w.tokens.platform,
            GLOBEX_PUBLISHER,
        ],
        valid=lambda w: [_publish_one("fuzz-valid-event")],
        probes=lambda w: [
            Probe(
                "deliveries-only token",
                w.tokens.acme_deliveries,
                [_publish_one("probe-scope")],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "acme publishes for globex",
                w.tokens.acme_publisher,
                [_publish_one("probe-tenant", tenant="globex")],
                Code.PERMISSION_DENIED,
            ),
        ],
    ),
    _D + "ListDeliveries": Plan(
        callers=lambda w: [w.tokens.acme_deliveries, w.tokens.platform, GLOBEX_DELIVERIES],
        valid=lambda w: [dispatcher_pb.ListDeliveriesRequest()],
        probes=lambda w: [
            Probe(
                "publish-only token",
                w.tokens.acme_publisher,
                [dispatcher_pb.ListDeliveriesRequest()],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "acme lists globex's",
                w.tokens.acme_deliveries,
                [dispatcher_pb.ListDeliveriesRequest(tenant="globex")],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex filters on acme's event",
                GLOBEX_DELIVERIES,
                [dispatcher_pb.ListDeliveriesRequest(message_id=w.acme_message_id)],
                Code.OK,
                _no_deliveries,
            ),
            Probe(
                "globex filters on acme's subscription",
                GLOBEX_DELIVERIES,
                [dispatcher_pb.ListDeliveriesRequest(subscription_id=w.acme.id)],
                Code.OK,
                _no_deliveries,
            ),
        ],
    ),
    _D + "GetDelivery": Plan(
        callers=lambda w: [w.tokens.acme_deliveries, w.tokens.platform, GLOBEX_DELIVERIES],
        valid=lambda w: [dispatcher_pb.GetDeliveryRequest(id=w.acme_delivery_id)],
        probes=lambda w: [
            Probe(
                "publish-only token",
                w.tokens.acme_publisher,
                [dispatcher_pb.GetDeliveryRequest(id=w.acme_delivery_id)],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex reads acme's",
                GLOBEX_DELIVERIES,
                [dispatcher_pb.GetDeliveryRequest(id=w.acme_delivery_id)],
                Code.NOT_FOUND,
            ),
        ],
    ),
    _D + "RedeliverEvent": Plan(
        callers=lambda w: [w.tokens.acme_deliveries, w.tokens.platform, GLOBEX_DELIVERIES],
        valid=lambda w: [dispatcher_pb.RedeliverEventRequest(message_id=w.acme_message_id)],
        probes=lambda w: [
            Probe(
                "read-only subscription token",
                w.tokens.acme,
                [dispatcher_pb.RedeliverEventRequest(message_id=w.acme_message_id)],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "globex replays acme's event",
                GLOBEX_DELIVERIES,
                [dispatcher_pb.RedeliverEventRequest(message_id=w.acme_message_id)],
                Code.NOT_FOUND,
            ),
            Probe(
                "acme names globex",
                w.tokens.acme_deliveries,
                [
                    dispatcher_pb.RedeliverEventRequest(
                        message_id=w.globex_message_id, tenant="globex"
                    )
                ],
                Code.PERMISSION_DENIED,
            ),
        ],
    ),
    _D + "ListSigningKeys": Plan(
        callers=lambda w: [w.tokens.acme_publisher, w.tokens.platform, w.tokens.globex],
        valid=lambda w: [dispatcher_pb.ListSigningKeysRequest()],
        # Public keys: any valid token of any tenant may read them.
        probes=lambda w: [
            Probe("globex", w.tokens.globex, [dispatcher_pb.ListSigningKeysRequest()], Code.OK),
            Probe(
                "subscription reader",
                w.tokens.acme_reader,
                [dispatcher_pb.ListSigningKeysRequest()],
                Code.OK,
            ),
        ],
    ),
    _D + "GetDeliveryActivity": Plan(
        callers=lambda w: [w.tokens.acme_deliveries, w.tokens.platform, GLOBEX_DELIVERIES],
        valid=lambda w: [dispatcher_pb.GetDeliveryActivityRequest()],
        probes=lambda w: [
            Probe(
                "publish-only token",
                w.tokens.acme_publisher,
                [dispatcher_pb.GetDeliveryActivityRequest()],
                Code.PERMISSION_DENIED,
            ),
            Probe(
                "acme reads globex's",
                w.tokens.acme_deliveries,
                [dispatcher_pb.GetDeliveryActivityRequest(tenant="globex")],
                Code.PERMISSION_DENIED,
            ),
        ],
    ),
    # Any valid token may ask what it allows; the answer is its own tenant.
    _C + "GetCaller": Plan(
        callers=lambda w: [w.tokens.acme_publisher, w.tokens.platform, w.tokens.globex],
        valid=lambda w: [caller_pb.GetCallerRequest()],
        probes=lambda w: [
            Probe("globex", w.tokens.globex, [caller_pb.GetCallerRequest()], Code.OK),
            Probe(
                "subscription reader", w.tokens.acme_reader, [caller_pb.GetCallerRequest()], Code.OK
            ),
        ],
    ),
}


def _short(rpc: str) -> str:
    return rpc.rsplit(".", 1)[-1]


# --- strategies ----------------------------------------------------------------------

HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n\x0b\x0c",
    "\x1b[31mred\x1b[0m",
    "\x7f\x85",
    "\u202etxt.exe",
    "\ufeffbom",
    "zero\u200bwidth",
    "e\u0301\u0301\u0301",
    "\U0001f4a9" * 16,
    "日本語のテキスト",
    "\U000e0041\uffff\U0010ffff",
    "../../../../etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "file:///etc/passwd",
    "' OR '1'='1",
    "'; DROP TABLE subscriptions; --",
    '" OR ""="',
    "1; SELECT pg_sleep(10)",
    "%",
    "_",
    "*",
    "\\",
    "%00",
    "${jndi:ldap://127.0.0.1/a}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "\r\nX-Injected: 1",
    "null",
    "true",
    "-1",
    "NaN",
    "9" * 40,
    "x" * 63,
    "x" * 64,
    "x" * 65,
    "x" * 200,
    "x" * 201,
    "x" * 1024,
    "x" * 1025,
    "x" * 2048,
    "x" * 2049,
    "x" * 4097,
    "x" * HUGE,
    "é" * (HUGE // 2 + 1),
    "\U0001f4a9" * (HUGE // 4 + 1),
    "x" * (MAX_MESSAGE_BYTES + 1),  # past the servers' receive limit on its own
)
SMALL_LIMIT = 256
SMALL_HOSTILE_STRINGS = tuple(s for s in HOSTILE_STRINGS if len(s) <= SMALL_LIMIT)
MANY = (100, 101, 500, 501, 1000, 1001)
MANY_MESSAGES = (100, 500, 501)  # past the 500 events of a batch, without thousands each time
SPECIAL_INTEGERS = (0, 1, -1, 49, 50, 51, 499, 500, 501, 999, 1000, 1001, 4096)
INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
MASK_NONSENSE = (
    "",
    "*",
    "id",
    "tenant",
    "etag",
    "has_secret",
    "create_time",
    "subscription.url",
    "url.host",
    "URL",
    "message_types[0]",
    "url,description",
    " url",
    "url\x00",
    "../url",
    "x" * 300,
)
MAX_DEPTH = 4
# Valid values of fields whose valid values are many: a fresh event id is accepted.
SHAPES: dict[str, st.SearchStrategy[str]] = {
    "message_id": st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
    ),
}

Hints = dict[str, list[str]]


def _forged_page_tokens() -> list[str]:
    """Page tokens a caller can forge: the service's format, with fingerprints that match."""
    filter_sets: list[list[object]] = [
        ["acme", None, None],
        ["acme", None, None, None],
        [None, None, None],
        [None, None, None, None],
        ["globex", None, None],
    ]
    positions: list[tuple[object, object]] = [
        ("0001-01-01T00:00:00+00:00", ""),
        ("0001-01-01T00:00:00+14:00", "sub_"),
        ("9999-12-31T23:59:59.999999-23:59", "zzz"),
        ("2020-01-01", "' OR 1=1 --"),
        ("2020-01-01T00:00:00+00:00", "a\x00b"),
        ("2020-01-01T00:00:00+00:00", "sub_\ud800"),
        ("2020-01-01T00:00:00+00:00", "dlv_\udfff"),
        ("not a time", "x"),
        (12, ["not", "an", "id"]),
        (None, None),
    ]
    forged = []
    for filters in filter_sets:
        fingerprint = hashlib.sha256(json.dumps(filters, default=str).encode()).hexdigest()[:16]
        for moment, last in positions:
            raw = json.dumps({"t": moment, "i": last, "f": fingerprint}).encode()
            forged.append(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    garbage = [b"[]", b"{}", b"null", b'{"t": "2020-01-01"}', b"\xff\xfe", b"x" * 5000]
    forged += [base64.urlsafe_b64encode(raw).decode() for raw in garbage]
    return [*forged, "!!!", "====", "a", "=" * 100, "%00"]


def _hints(world: World) -> Hints:
    """Plausible values by field name, so generated requests also get past validation."""
    w = world
    ids = [w.acme.id, w.globex.id, w.acme_delivery_id, w.globex_delivery_id]
    message_types = [
        NOTE,
        CLAIM_CREATED,
        "event.claim.*",
        "event.*",
        "event.nothing.*",
        f"{NOTE}.*",
        "event.note.created.v2",
        ".*",
        "event..created",
        NOTE.upper(),
        f"{NOTE} ",
    ]
    return {
        "id": [*ids, "sub_" + "0" * 32, "x" * 64, "x" * 65, "x" * 200, "x" * 201],
        "subscription_id": [w.acme.id, w.globex.id, "sub_" + "0" * 32],
        "message_id": [
            w.acme_message_id,
            w.globex_message_id,
            "fuzz-event-1",
            "a" * 200,
            "a" * 201,
            "a b",
        ],
        "etag": [
            w.acme.etag,
            w.globex.etag,
            '"1"',
            '"0"',
            '"-1"',
            '"999999999999999999"',
            '"9999999999999999999"',
            "1",
            'W/"1"',
            '""',
        ],
        "tenant": ["acme", "globex", "*", "ACME", "a" * 64, "a" * 65, "-acme", "acme\n"],
        "url": [
            w.receiver.url("/fuzz"),
            "https://receiver.example.com/hooks",
            "http://127.0.0.1:1/",
            "http://[::1]:8080/x",
            "http://[::1/",
            "https://user:pw@example.com/",
            "ftp://example.com/",
            "javascript:alert(1)",
            "https://example.com/#fragment",
            "https://example.com:0/",
            "https://example.com:65536/",
            "http:///path",
            "https://" + "a" * 2040 + ".io/",
            "http://169.254.169.254/latest/meta-data/",
        ],
        "message_type": message_types,
        "message_types": message_types,
        "secret": [
            SECRET,
            "whsec_" + base64.b64encode(bytes(24)).decode(),
            "whsec_" + base64.b64encode(bytes(64)).decode(),
            "whsec_" + base64.b64encode(bytes(23)).decode(),
            "whsec_" + base64.b64encode(bytes(65)).decode(),
            "whsec_",
            "whsec_!!!!",
            "whsec_" + "A" * 300,
        ],
        "details": [
            "{}",
            "[]",
            "null",
            '"text"',
            "{",
            '{"a": 1, "a": 2}',
            json.dumps({"messageType": CLAIM_CREATED}),
            json.dumps({"messageType": 5}),
            json.dumps(DOCUMENTED_VALID_DETAILS[CLAIM_CREATED]),
            json.dumps({**DOCUMENTED_VALID_DETAILS[CLAIM_CREATED], "amount": -(2**63)}),
            "[" * 5000 + "]" * 5000,
            '{"a":' * 2000 + "1" + "}" * 2000,
            '{"x":' + "[" * 990 + "1234567890123456789" + "]" * 990 + "}",
            '{"x":' + "[" * 40 + "]" * 40 + "}",
            '{"a" : 1, "a" : 2}',
            '{"n": 1e400}',
            '{"n": 123456789012345678901234567890}',
            '{"s": "\\ud800"}',
            '{"s": "\\u0000"}',
            json.dumps({"s": "x" * HUGE}),
        ],
        "page_token": _forged_page_tokens(),
        # The fields UpdateSubscriptionRequest.update_mask documents as changeable.
        "paths": [
            "url",
            "message_types",
            "enabled",
            "description",
            "signature_algorithm",
            "secret",
            "disabled_reason",
        ],
        "description": ["fuzzed", "x" * 1024, "x" * 1025],
        "disabled_reason": ["fuzzed", "x" * 1024, "x" * 1025],
    }


def _pick(values: Sequence[T]) -> st.SearchStrategy[T]:
    """Like sampled_from, without its cost per draw for values megabytes long."""
    return st.integers(0, len(values) - 1).map(values.__getitem__)


def _strings(name: str, hints: Hints, *, small: bool) -> st.SearchStrategy[str]:
    options = [_pick(SMALL_HOSTILE_STRINGS if small else HOSTILE_STRINGS), st.text(max_size=20)]
    named = [h for h in hints.get(name, []) if not small or len(h) <= SMALL_LIMIT]
    if named:
        options.insert(0, _pick(named))
    if name in SHAPES:
        options.insert(0, SHAPES[name])
    return st.one_of(options)


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted(
        {n for n in (low, low + 1, high - 1, high, *SPECIAL_INTEGERS) if low <= n <= high}
    )
    return _pick(edges) | st.integers(low, high)


def _timestamp(seconds: int, nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    seconds = _pick(
        [FIRST_SECOND, FIRST_SECOND + 1, -1, 0, 1, 1_700_000_000, LAST_SECOND - 1, LAST_SECOND]
    ) | st.integers(FIRST_SECOND, LAST_SECOND)
    nanos = _pick([0, 1, 999_999_999]) | st.integers(0, 999_999_999)
    valid = st.builds(_timestamp, seconds, nanos)
    out_of_range = st.builds(
        _timestamp, _pick([FIRST_SECOND - 1, LAST_SECOND + 1, -(2**63), 2**63 - 1]), nanos
    ) | st.builds(_timestamp, seconds, _pick([-1, 10**9, -(2**31), 2**31 - 1]))
    # One in eight: out of range is a known bug that ends the call, and hides the rest.
    return st.integers(0, 7).flatmap(lambda n: out_of_range if n == 0 else valid)


def _field_names(root: Descriptor) -> list[str]:
    return sorted({f.name for d in _reachable(root) for f in d.fields})


def _field_masks(names: list[str], hints: Hints) -> st.SearchStrategy[field_mask_pb2.FieldMask]:
    documented = st.lists(_pick(hints["paths"]), min_size=1, max_size=3, unique=True)
    path = _pick([*names, *MASK_NONSENSE]) | st.text(max_size=12)
    many = st.tuples(path, _pick(MANY)).map(lambda repeated: [repeated[0]] * repeated[1])
    lists = st.one_of(documented, documented, st.lists(path, max_size=6), many)
    return lists.map(lambda chosen: field_mask_pb2.FieldMask(paths=chosen))


def _set(message: Message, name: str, value: Any) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    message.ClearField(name)
    if value is None:
        return
    if field.is_repeated:
        getattr(message, name).extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    built = cls()
    for name, value in values.items():
        _set(built, name, value)
    return built


def _messages(
    descriptor: Descriptor, hints: Hints, names: list[str], *, small: bool = False, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`, each field unset or hostile, recursively."""
    if descriptor.full_name == "google.protobuf.Timestamp":
        return _timestamps()
    if descriptor.full_name == "google.protobuf.FieldMask":
        return _field_masks(names, hints)
    fields = {
        field.name: st.none() | _field_values(field, hints, names, small=small, depth=depth)
        for field in descriptor.fields
        if field.type != FieldDescriptor.TYPE_MESSAGE or depth < MAX_DEPTH
    }
    cls = message_factory.GetMessageClass(descriptor)
    return st.fixed_dictionaries(fields).map(lambda values: _build(cls, values))


class _Keep:
    """Leaves a field of a mutated message as it was."""


KEEP = _Keep()


def _mutated(valid: Message, changes: dict[str, Any]) -> Message:
    result = type(valid)()
    result.CopyFrom(valid)
    for name, value in changes.items():
        if value is not KEEP:
            _set(result, name, value)
    return result


def _mutations(
    valid: Message, hints: Hints, names: list[str], *, depth: int = 0
) -> st.SearchStrategy[Message]:
    """`valid` with some fields kept, some replaced by hostile values or cleared, and the
    messages inside mutated in turn: requests that get past the first checks."""
    changes = {}
    for field in cast(Descriptor, valid.DESCRIPTOR).fields:
        options = [
            st.just(KEEP),
            st.just(KEEP),
            st.just(KEEP),
            st.none() | _field_values(field, hints, names, small=False, depth=depth),
        ]
        value = getattr(valid, field.name)
        nested = field.type == FieldDescriptor.TYPE_MESSAGE and depth < MAX_DEPTH
        if nested and field.is_repeated and len(value):
            options.append(
                st.lists(
                    _mutations(value[0], hints, names, depth=depth + 1), min_size=1, max_size=3
                )
            )
        elif nested and not field.is_repeated and valid.HasField(field.name):
            options.append(_mutations(value, hints, names, depth=depth + 1))
        changes[field.name] = st.one_of(options)
    return st.fixed_dictionaries(changes).map(lambda chosen: _mutated(valid, chosen))


def _field_values(
    field: FieldDescriptor, hints: Hints, names: list[str], *, small: bool, depth: int
) -> st.SearchStrategy[Any]:
    if not field.is_repeated:
        return _single_values(field, hints, names, small=small, depth=depth)
    few = st.lists(_single_values(field, hints, names, small=small, depth=depth), max_size=4)
    # Many copies of one small element: past every count limit, without megabytes each.
    counts = MANY_MESSAGES if field.type == FieldDescriptor.TYPE_MESSAGE else MANY
    many = st.tuples(
        _single_values(field, hints, names, small=True, depth=depth), _pick(counts)
    ).map(lambda repeated: [repeated[0]] * repeated[1])
    return st.one_of(few, few, many)


def _single_values(
    field: FieldDescriptor, hints: Hints, names: list[str], *, small: bool, depth: int
) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _messages(_message_type(field), hints, names, small=small, depth=depth + 1)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = [value.number for value in field.enum_type.values]
        return _pick([*known, max(known) + 1, 99, -1, 2**31 - 1, -(2**31)])
    if kind == FieldDescriptor.TYPE_STRING:
        return _strings(field.name, hints, small=small)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    return _integers(*INTEGER_RANGES[kind])


def _unknown_fields(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Well-formed fields the request type does not declare, as a newer client may send."""
    first = max((f.number for f in descriptor.fields), default=0) + 1
    number = _pick([first, 1000, 2**29 - 1]) | st.integers(first, 2**29 - 1)
    field = st.one_of(
        st.tuples(number, st.integers(0, 2**64 - 1)).map(
            lambda f: _varint(f[0] << 3) + _varint(f[1])
        ),
        st.tuples(number, st.binary(max_size=64)).map(
            lambda f: _varint(f[0] << 3 | 2) + _varint(len(f[1])) + f[1]
        ),
        st.tuples(number, st.binary(min_size=8, max_size=8)).map(
            lambda f: _varint(f[0] << 3 | 1) + f[1]
        ),
        st.tuples(number, st.binary(min_size=4, max_size=4)).map(
            lambda f: _varint(f[0] << 3 | 5) + f[1]
        ),
    )
    return st.lists(field, max_size=3).map(b"".join)


def _generated_cases(method: MethodDescriptor, plan: Plan, world: World) -> st.SearchStrategy[Case]:
    hints = _hints(world)
    names = _field_names(method.input_type)
    valid = plan.valid(world)[0]
    mutations = _mutations(valid, hints, names)
    request = st.one_of(_messages(method.input_type, hints, names), mutations, mutations)
    requests = (
        st.lists(request, max_size=3) if method.client_streaming else request.map(lambda r: [r])
    )
    return st.tuples(_pick(plan.callers(world)), requests, _unknown_fields(method.input_type)).map(
        lambda drawn: Case.of_messages(*drawn)
    )


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = b"\x0a" + _varint(len(inner)) + inner
    return inner


CRAFTED_PAYLOADS: tuple[bytes, ...] = (
    b"\xff",  # a tag cut short
    b"\x08" + b"\xff" * 10 + b"\x01",  # a varint of eleven bytes
    b"\x0a\x05ab",  # field 1 claims five bytes, two follow
    b"\x0a\xff\xff\xff\xff\x07",  # field 1 claims 2 GiB
    b"\x0a\x02\xff\xfe",  # field 1 as invalid UTF-8
    b"\x12\x03\xed\xa0\x80",  # field 2 as an encoded surrogate
    b"\x0b\x0c",  # an empty group in field 1
    b"\x0b" * 120 + b"\x0c" * 120,  # groups nested past the recursion limit
    b"\x0e\x00",  # wire type 6 does not exist
    b"\x0f\x00",  # nor does 7
    b"\x00\x00",  # field number 0
    b"\x0c",  # an end-group tag without a start
    b"\xf8\xff\xff\xff\x0f\x01",  # the largest field number
    b"\x0a\x00" * 2000,  # field 1, empty, two thousand times
    _nested(200),  # field 1 inside field 1, two hundred deep
    b"\x2a" + _varint(300) + b"\x0a\x00" * 150,  # field 5 as a length-delimited blob
)


def _raw_payloads(template: bytes) -> st.SearchStrategy[bytes]:
    garbage = st.binary(min_size=1, max_size=128)
    options = [garbage, _pick(CRAFTED_PAYLOADS), garbage.map(lambda g: template + g)]
    if len(template) > 1:
        options += [
            st.integers(1, len(template) - 1).map(lambda n: template[:n]),
            st.tuples(st.integers(0, len(template) - 1), st.integers(1, 255)).map(
                lambda flip: (
                    template[: flip[0]]
                    + bytes([template[flip[0]] ^ flip[1]])
                    + template[flip[0] + 1 :]
                )
            ),
            st.tuples(st.integers(0, len(template)), garbage).map(
                lambda cut: template[: cut[0]] + cut[1] + template[cut[0] :]
            ),
        ]
    return st.one_of(options)


# --- judging an outcome ----------------------------------------------------------------


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def _reachable(root: Descriptor) -> list[Descriptor]:
    found: list[Descriptor] = []
    pending = [root]
    while pending:
        descriptor = pending.pop()
        if descriptor in found:
            continue
        found.append(descriptor)
        pending += [f.message_type for f in descriptor.fields if f.message_type is not None]
    return found


def _walk(descriptor: Descriptor, parts: list[str]) -> bool:
    field = descriptor.fields_by_name.get(re.sub(r"\[\d+\]$", "", parts[0]))
    if field is None:
        return False
    if len(parts) == 1:
        return True
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _walk(_message_type(field), parts[1:])
    # A path into a string's content: the JSON of event details (`details.amount`).
    return field.type == FieldDescriptor.TYPE_STRING


def _names_a_field(root: Descriptor, path: str) -> bool:
    """Whether `path` names a field of the request, or of a message inside it (a
    published event's violations are relative to the event)."""
    return bool(path) and any(_walk(d, path.split(".")) for d in _reachable(root))


def _results_of(response: Message) -> list[dispatcher_pb.PublishResult]:
    if isinstance(response, dispatcher_pb.PublishEventsResponse):
        return list(response.results)
    if isinstance(response, dispatcher_pb.PublishEventResponse):
        return [response.result]
    return []


def _messages_in(message: Message) -> Iterator[Message]:
    yield message
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                yield from _messages_in(item)


def _leaks(message: Message, tenant: str, *, secrets: bool) -> Iterator[str]:
    for inner in _messages_in(message):
        for field, value in inner.ListFields():
            if field.name == "tenant" and tenant != ALL_TENANTS and value != tenant:
                yield f"{inner.DESCRIPTOR.name}.tenant is {value!r} for a caller of {tenant!r}"
            if field.name == "secret" and not secrets:
                yield f"{inner.DESCRIPTOR.name}.secret is returned"


def _rejection_problems(method: MethodDescriptor, error: dispatcher_pb.EventError) -> Iterator[str]:
    """A refused event says why, as a unary call would: a code, a message, the fields."""
    shown = error.message[:300]
    if error.code not in Code.__members__ or error.code in ("OK", "INTERNAL", "UNKNOWN"):
        yield f"an event rejected with code {error.code!r}: {shown}"
    if not error.message:
        yield f"an event rejected ({error.code}) without a message"
    if error.code == "INVALID_ARGUMENT" and not error.field_violations:
        yield f"an event rejected as INVALID_ARGUMENT without field violations: {shown}"
    for violation in error.field_violations:
        if not _names_a_field(method.input_type, violation.field) or not violation.description:
            named = f"{violation.field[:100]!r}: {violation.description[:100]!r}"
            yield f"an event's violation that names no field: {named}"


PUBLISH_RESPONSES = (
    dispatcher_pb.PublishEventsResponse.DESCRIPTOR,
    dispatcher_pb.PublishEventResponse.DESCRIPTOR,
)


def _publish_problems(
    method: MethodDescriptor, requests: list[Message], outcome: Outcome
) -> Iterator[str]:
    """One result per event sent, in order; PublishEvent answers a refusal as a status."""
    for response in outcome.responses:
        for result in _results_of(response):
            if result.outcome == dispatcher_pb.PublishResult.OUTCOME_UNSPECIFIED:
                yield f"a result without an outcome: {result}"
            if result.outcome == dispatcher_pb.PublishResult.OUTCOME_REJECTED:
                yield from _rejection_problems(method, result.error)
    if outcome.code != Code.OK or method.output_type not in PUBLISH_RESPONSES:
        return
    sent = [
        [event.message_id for event in request.events]
        if isinstance(request, dispatcher_pb.PublishEventsRequest)
        else [request.event.message_id]
        for request in requests
        if isinstance(
            request, dispatcher_pb.PublishEventsRequest | dispatcher_pb.PublishEventRequest
        )
    ]
    answered = [[r.message_id for r in _results_of(response)] for response in outcome.responses]
    if sent != answered:
        yield f"the results name {_clipped(answered)}, the requests sent {_clipped(sent)}"
    for response in outcome.responses:
        if isinstance(response, dispatcher_pb.PublishEventResponse) and (
            response.result.outcome == dispatcher_pb.PublishResult.OUTCOME_REJECTED
        ):
            yield "PublishEvent answered OK with a rejected result instead of an error status"


def _clipped(ids: list[list[str]]) -> str:
    return repr(
        [[i[:20] for i in batch[:3]] + (["..."] if len(batch) > 3 else []) for batch in ids]
    )


def _problems(
    world: World,
    method: MethodDescriptor,
    token: str,
    requests: list[Message] | None,
    outcome: Outcome,
) -> list[str]:
    problems = []
    code = outcome.code
    if code in BROKEN:
        problems.append(f"answered {code.name}: {outcome.details[:300]!r}")
    if code == Code.DEADLINE_EXCEEDED:
        problems.append(f"no answer within {CALL_TIMEOUT}s: {outcome.details[:300]!r}")
    if code != Code.OK and not outcome.details.strip():
        problems.append(f"{code.name} without a message")
    if code == Code.INVALID_ARGUMENT and requests is None:
        # Bytes that are no message of the type have no field to name: the type is named.
        if method.input_type.full_name not in outcome.details:
            problems.append(f"an undecodable request refused as: {outcome.details[:300]!r}")
    elif code == Code.INVALID_ARGUMENT:
        if not outcome.violations:
            problems.append(f"INVALID_ARGUMENT without field violations: {outcome.details[:300]!r}")
        for field, description in outcome.violations.items():
            if not _names_a_field(method.input_type, field) or not description.strip():
                problems.append(
                    f"a violation that names no field: {field[:100]!r}: {description[:100]!r}"
                )
    secrets = method.name == "WatchSubscriptions" and token == world.tokens.platform
    for response in outcome.responses:
        problems += _leaks(response, world.tenant_of(token), secrets=secrets)
    problems += _publish_problems(method, requests or [], outcome)
    return problems


# --- showing a case ----------------------------------------------------------------------


def _shortened(message: Message) -> Message:
    copy = type(message)()
    copy.CopyFrom(message)
    for inner in _messages_in(copy):
        for field, value in inner.ListFields():
            if field.is_repeated and len(value) > 4:
                hidden = len(value) - 4
                del value[4:]
                if field.type == FieldDescriptor.TYPE_STRING:
                    value.append(f"...and {hidden} more")
            if field.type == FieldDescriptor.TYPE_STRING:
                texts = list(value) if field.is_repeated else [value]
                short = [t if len(t) <= 80 else f"{t[:40]}...[{len(t)} characters]" for t in texts]
                if field.is_repeated:
                    del value[:]
                    value.extend(short)
                else:
                    setattr(inner, field.name, short[0])
    return copy


def _shown(message: Message) -> str:
    text = text_format.MessageToString(_shortened(message), as_one_line=True)
    return f"{message.DESCRIPTOR.name}({text})"


class Case:
    """One call: a token and the requests (messages, or raw payloads) it sends."""

    def __init__(self, token: str, requests: list[Message] | None, payloads: list[bytes]) -> None:
        self.token = token
        self.requests = requests
        self.payloads = payloads

    @classmethod
    def of_messages(cls, token: str, requests: list[Message], unknown: bytes = b"") -> Case:
        return cls(token, requests, [r.SerializeToString() + unknown for r in requests])

    def __repr__(self) -> str:
        if self.requests is not None:
            shown = ", ".join(_shown(r) for r in self.requests)
            unknown = (
                len(self.payloads[0]) - len(self.requests[0].SerializeToString())
                if self.requests
                else 0
            )
            if unknown:
                shown += f", each followed by {unknown} bytes of undeclared fields"
        else:
            shown = ", ".join(
                f"{len(p)} bytes {p[:48].hex()}{'...' if len(p) > 48 else ''}"
                for p in self.payloads
            )
        return f"Case(token={self.token!r}, [{shown}])"


def _decoded(method: MethodDescriptor, payloads: list[bytes]) -> list[Message] | None:
    cls = message_factory.GetMessageClass(method.input_type)
    try:
        return [cls.FromString(payload) for payload in payloads]
    except DecodeError:
        return None


# --- running -----------------------------------------------------------------------------


async def _run_case(
    world: World, method: MethodDescriptor, backend: str, tally: Counter[str], case: Case
) -> None:
    outcome = await _invoke(world, method, case.payloads, auth(case.token))
    if outcome.write_cut_short:
        tally["stream ended by the server during a write"] += 1
        return
    requests = case.requests if case.requests is not None else _decoded(method, case.payloads)
    tally[outcome.code.name] += 1
    for response in outcome.responses:
        for result in _results_of(response):
            name = dispatcher_pb.PublishResult.Outcome.Name(result.outcome).removeprefix("OUTCOME_")
            tally[f"event {name} {result.error.code}".rstrip()] += 1
    problems = _problems(world, method, case.token, requests, outcome)
    assert not problems, f"{method.name}: {'; '.join(problems)}\n  sent: {case!r}"


async def _assert_still_serving(world: World) -> None:
    for name, channel in world.channels.items():
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service=name), timeout=CALL_TIMEOUT
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    await world.subscriptions.ListSubscriptions(
        subscription_pb.ListSubscriptionsRequest(),
        metadata=auth(world.tokens.acme),
        timeout=CALL_TIMEOUT,
    )
    await world.dispatcher.ListSigningKeys(
        dispatcher_pb.ListSigningKeysRequest(),
        metadata=auth(world.tokens.acme),
        timeout=CALL_TIMEOUT,
    )


def _report(what: str, rpc: str, backend: str, ran: int, tally: Counter[str]) -> str:
    counts = ", ".join(f"{name} {count}" for name, count in tally.most_common())
    line = f"{_short(rpc)} [{backend}] {what}: {ran} cases ({counts})"
    report_cases(line)
    return line


# --- the tests -----------------------------------------------------------------------------


def test_every_rpc_of_both_services_is_fuzzed() -> None:
    assert {s.full_name for s in SERVICES} == {
        "webhooks.v1.SubscriptionService",
        "webhooks.v1.DispatcherService",
        "webhooks.v1.CallerService",
    }
    assert set(PLANS) == set(RPCS), (
        f"RPCs without a fuzz plan: {sorted(set(RPCS) - set(PLANS))}; "
        f"plans without an RPC: {sorted(set(PLANS) - set(RPCS))}"
    )
    # `_invoke` drives unary, server-streaming and bidirectional calls (one answer per
    # request); another kind of RPC needs teaching it first.
    kinds = {(m.client_streaming, m.server_streaming) for m in RPCS.values()}
    assert kinds <= {(False, False), (False, True), (True, True)}, kinds


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("rpc", sorted(RPCS), ids=_short)
async def test_fuzz(rpc: str, backend: str, world: World) -> None:
    """Generated requests, then raw bytes; both servers still serve afterwards."""
    method, plan = RPCS[rpc], PLANS[rpc]
    generated: Counter[str] = Counter()
    generated_ran = await explore(
        _generated_cases(method, plan, world),
        partial(_run_case, world, method, backend, generated),
        examples=GENERATED_EXAMPLES,
        case_timeout=4 * CALL_TIMEOUT,
    )

    template = plan.valid(world)[0].SerializeToString()
    payloads = _raw_payloads(template)
    if method.client_streaming:
        sent = st.lists(payloads | st.just(template), min_size=1, max_size=3)
    else:
        sent = payloads.map(lambda payload: [payload])
    raw: Counter[str] = Counter()
    raw_ran = await explore(
        st.tuples(_pick(plan.callers(world)), sent).map(
            lambda drawn: Case(drawn[0], None, drawn[1])
        ),
        partial(_run_case, world, method, backend, raw),
        examples=RAW_EXAMPLES,
        case_timeout=4 * CALL_TIMEOUT,
    )

    await _assert_still_serving(world)
    report = "; ".join(
        [
            _report("generated requests", rpc, backend, generated_ran, generated),
            _report("raw bytes", rpc, backend, raw_ran, raw),
        ]
    )
    assert generated_ran >= GENERATED_EXAMPLES, report
    assert raw_ran >= RAW_EXAMPLES, report


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_fuzz_on_postgresql(backend: str, world: World) -> None:
    """A shorter pass of generated requests over every RPC on PostgreSQL, whose types,
    strings and times are stricter than SQLite's. Deletes go last, so the seeds live on."""
    reports = []
    for rpc in sorted(RPCS, key=lambda rpc: _short(rpc) == "DeleteSubscription"):
        method, plan = RPCS[rpc], PLANS[rpc]
        tally: Counter[str] = Counter()
        ran = await explore(
            _generated_cases(method, plan, world),
            partial(_run_case, world, method, backend, tally),
            examples=POSTGRES_EXAMPLES,
            case_timeout=4 * CALL_TIMEOUT,
        )
        reports.append(_report("generated requests", rpc, backend, ran, tally))
        assert ran >= POSTGRES_EXAMPLES, reports[-1]
    await _assert_still_serving(world)


def _bad_credentials(token: str) -> list[tuple[str, Metadata]]:
    return [
        ("no metadata", ()),
        ("empty authorization", (("authorization", ""),)),
        ("scheme only", (("authorization", "Bearer"),)),
        ("scheme and a space", (("authorization", "Bearer "),)),
        ("basic credentials", (("authorization", "Basic YWNtZTpzZWNyZXQ="),)),
        ("token without a scheme", (("authorization", token),)),
        ("unknown token", auth("not-a-token-anyone-issued")),
        ("token with a suffix", auth(token + "x")),
        ("token cut short", auth(token[:-1])),
        ("the token's hash", auth(hash_token(token))),
        ("two tokens in one entry", auth(f"{token} {token}")),
        ("two authorization entries", (*auth(token), *auth(token))),
        ("huge token", auth("t" * 5000)),
        ("token in a binary header", (("authorization-bin", f"Bearer {token}".encode()),)),
        ("SQL as a token", auth("'OR'1'='1")),
    ]


async def _state(world: World) -> list[object]:
    """What refused calls must leave alone: every subscription and every delivery."""
    subscriptions = await world.subscriptions.ListSubscriptions(
        subscription_pb.ListSubscriptionsRequest(page_size=1000),
        metadata=auth(world.tokens.operator),
        timeout=CALL_TIMEOUT,
    )
    deliveries = await world.dispatcher.ListDeliveries(
        dispatcher_pb.ListDeliveriesRequest(page_size=1000),
        metadata=auth(world.tokens.platform),
        timeout=CALL_TIMEOUT,
    )
    return [
        sorted((s.id, s.etag) for s in subscriptions.subscriptions),
        sorted(
            (d.id, d.state, d.attempt_count, d.update_time.ToNanoseconds())
            for d in deliveries.deliveries
        ),
    ]


async def _delivered(world: World) -> None:
    """Waits until the seeded deliveries are done, so nothing changes by itself."""

    async def settled() -> bool | None:
        page = await world.dispatcher.ListDeliveries(
            dispatcher_pb.ListDeliveriesRequest(),
            metadata=auth(world.tokens.platform),
            timeout=CALL_TIMEOUT,
        )
        done = all(d.state == dispatcher_pb.DELIVERY_STATE_SUCCEEDED for d in page.deliveries)
        return True if done and len(page.deliveries) == 2 else None

    await _within(10, settled)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_tokens(backend: str, world: World) -> None:
    """On every RPC: bad tokens answer UNAUTHENTICATED; the wrong scope or tenant
    PERMISSION_DENIED or NOT_FOUND; nothing of another tenant shows; nothing changes."""
    await _delivered(world)
    before = await _state(world)
    wrong: list[str] = []
    calls = 0
    for rpc in sorted(RPCS):
        method, plan = RPCS[rpc], PLANS[rpc]
        token = plan.callers(world)[0]
        probes = [
            Probe(label, token, plan.valid(world), Code.UNAUTHENTICATED, metadata=metadata)
            for label, metadata in _bad_credentials(token)
        ] + plan.probes(world)
        for probe in probes:
            calls += 1
            sent = auth(probe.token) if probe.metadata is None else probe.metadata
            payloads = [r.SerializeToString() for r in probe.requests]
            outcome = await _invoke(world, method, payloads, sent)
            problems = _problems(world, method, probe.token, probe.requests, outcome)
            if outcome.code != probe.expect:
                got = f"{outcome.code.name}: {outcome.details[:200]!r}"
                problems.append(f"expected {probe.expect.name}, got {got}")
            if probe.check is not None:
                problems += probe.check(outcome)
            wrong += [f"{method.name}, {probe.label}: {problem}" for problem in problems]
    await _assert_still_serving(world)
    assert await _state(world) == before, "a refused call changed something"
    report_cases(f"tokens [{backend}]: {calls} calls over {len(RPCS)} RPCs")
    assert not wrong, f"{len(wrong)} of {calls} calls went wrong:\n" + "\n".join(wrong)


# Details JSON cannot carry unchanged, and the field each refusal must name.
UNFAITHFUL_DETAILS = {
    "the issue's deep nesting": (
        '{"x":' + "[" * 990 + "1234567890123456789" + "]" * 990 + "}",
        "details.x",
    ),
    "nesting past the parser": ('{"x":' + "[" * 5000 + "]" * 5000 + "}", "details"),
    "nesting one level past the limit": ('{"x":' + "[" * 32 + "]" * 32 + "}", "details.x"),
    "repeated key": ('{"a": 1, "b": {"c": 1, "c": 2}}', "details.b"),
    "repeated key, spaced": ('{"a" : 1, "a" : 2}', "details"),
    "overflowing number": ('{"amount": 1e999}', "details.amount"),
    "integer beyond 64 bits": ('{"n": [18446744073709551616]}', "details.n[0]"),
    "lone surrogate": ('{"s": "\\ud800"}', "details.s"),
}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("rpc", ["PublishEvent", "PublishEvents"])
async def test_details_json_cannot_carry_is_refused_naming_where_and_the_stream_goes_on(
    rpc: str, world: World
) -> None:
    method = RPCS[_D + rpc]
    wrong: list[str] = []
    for number, (case, (details, field)) in enumerate(UNFAITHFUL_DETAILS.items()):
        if rpc == "PublishEvents":
            # Between two good events, and in a batch of its own before a good one.
            requests: list[Message] = [
                dispatcher_pb.PublishEventsRequest(
                    events=[
                        _event(f"before-{number}"),
                        _event(f"bad-{number}", details=details),
                        _event(f"after-{number}"),
                    ]
                ),
                _publish_batch(f"next-{number}"),
            ]
        else:
            requests = [_publish_one(f"bad-{number}", details=details)]
        payloads = [r.SerializeToString() for r in requests]
        outcome = await _invoke(world, method, payloads, auth(world.tokens.acme_publisher))
        if rpc == "PublishEvents":
            results = [(r.message_id, r.error.code) for r in _results_of_all(outcome)]
            expected = [
                (f"before-{number}", ""),
                (f"bad-{number}", "INVALID_ARGUMENT"),
                (f"after-{number}", ""),
                (f"next-{number}", ""),
            ]
            fields = [v.field for r in _results_of_all(outcome) for v in r.error.field_violations]
            if outcome.code != Code.OK or results != expected or fields != [field]:
                wrong.append(f"{case}: {outcome.code.name} {results} {fields}")
        elif outcome.code != Code.INVALID_ARGUMENT or list(outcome.violations) != [field]:
            wrong.append(f"{case}: {outcome.code.name} {outcome.violations} {outcome.details!r}")
    await _assert_still_serving(world)
    assert not wrong, "\n".join(wrong)


def _results_of_all(outcome: Outcome) -> list[dispatcher_pb.PublishResult]:
    return [result for response in outcome.responses for result in _results_of(response)]


# --- known bugs ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_request_that_does_not_parse_is_an_invalid_argument(world: World) -> None:
    payload = b"\x0a\x05ab"  # field 1 claims five bytes, two follow: no message parses it
    answers = {}
    for rpc in sorted(RPCS):
        method = RPCS[rpc]
        outcome = await _invoke(world, method, [payload], auth(PLANS[rpc].callers(world)[0]))
        answers[method.name] = (outcome.code.name, outcome.details[:120])
    await _assert_still_serving(world)
    broken = {
        name: answer for name, answer in answers.items() if answer[0] in ("INTERNAL", "UNKNOWN")
    }
    assert not broken, f"{len(broken)} of {len(answers)} RPCs: {broken}"


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("rpc", sorted(TIMESTAMP_RPCS))
async def test_an_out_of_range_timestamp_is_an_invalid_argument(rpc: str, world: World) -> None:
    beyond = timestamp_pb2.Timestamp(seconds=LAST_SECOND + 1)
    method = RPCS[_D + rpc]
    requests: list[Message]
    if rpc == "PublishEvents":
        # The bad event is refused on its own; the stream goes on to the next batch.
        requests = [_publish_batch("late", timestamp=beyond), _publish_batch("after-late")]
        token = world.tokens.acme_publisher
    elif rpc == "PublishEvent":
        requests = [_publish_one("late", timestamp=beyond)]
        token = world.tokens.acme_publisher
    else:
        requests = [
            dispatcher_pb.RedeliverEventRequest(subscription_id=world.acme.id, since=beyond)
        ]
        token = world.tokens.acme_deliveries
    outcome = await _invoke(world, method, [r.SerializeToString() for r in requests], auth(token))
    await _assert_still_serving(world)
    assert outcome.code not in BROKEN, f"{outcome.code.name}: {outcome.details[:300]}"
    if rpc == "PublishEvents":
        results = _results_of_all(outcome)
        assert [(r.message_id, r.error.code) for r in results] == [
            ("late", "INVALID_ARGUMENT"),
            ("after-late", ""),
        ]
        assert any(v.field.endswith("timestamp") for v in results[0].error.field_violations)
    else:
        assert outcome.code == Code.INVALID_ARGUMENT
        assert any(field.endswith(("timestamp", "since")) for field in outcome.violations)


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_nul_character_is_not_an_internal_error_on_postgresql(world: World) -> None:
    t = world.tokens
    calls: list[tuple[str, str, Message]] = [
        ("CreateSubscription", t.acme, _new_subscription(world, description="a\x00b")),
        ("GetSubscription", t.acme, subscription_pb.GetSubscriptionRequest(id="sub_\x00")),
        (
            "ListSubscriptions",
            t.operator,
            subscription_pb.ListSubscriptionsRequest(tenant="a\x00b"),
        ),
        (
            "UpdateSubscription",
            t.acme,
            subscription_pb.UpdateSubscriptionRequest(
                subscription=subscription_pb.Subscription(id="sub_\x00", description="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
        ),
        ("DeleteSubscription", t.acme, subscription_pb.DeleteSubscriptionRequest(id="sub_\x00")),
        (
            "WatchSubscriptions",
            t.platform,
            subscription_pb.WatchSubscriptionsRequest(tenant="a\x00b"),
        ),
        ("GetDelivery", t.acme_deliveries, dispatcher_pb.GetDeliveryRequest(id="dlv_\x00")),
        (
            "ListDeliveries",
            t.acme_deliveries,
            dispatcher_pb.ListDeliveriesRequest(message_id="m\x00"),
        ),
        (
            "RedeliverEvent",
            t.acme_deliveries,
            dispatcher_pb.RedeliverEventRequest(message_id="m\x00"),
        ),
    ]
    by_name = {method.name: method for method in RPCS.values()}
    answers = {}
    for name, token, request in calls:
        outcome = await _invoke(world, by_name[name], [request.SerializeToString()], auth(token))
        answers[name] = outcome.code.name
    await _assert_still_serving(world)
    broken = {name: code for name, code in answers.items() if code in ("INTERNAL", "UNKNOWN")}
    assert not broken, f"{len(broken)} of {len(answers)} RPCs: {broken}"


# --- forged page tokens ------------------------------------------------------------------------


def _forged_from(issued: str) -> dict[str, str]:
    """Forgeries of a page token the service issued: each keeps its fingerprint, so only the
    forged part can be why it is refused (or, before tokens were checked, why it broke)."""
    fields = json.loads(base64.urlsafe_b64decode(issued + "=" * (-len(issued) % 4)))
    last_id, moment = fields["i"], fields["t"]

    def token(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")

    def replaced(**changes: object) -> str:
        return token(json.dumps({**fields, **changes}))

    return {
        # json.dumps writes the escape \ud800, which json.loads reads back as a lone surrogate.
        "lone surrogate in the id": replaced(i=last_id[:-1] + "\ud800"),
        "nul in the id": replaced(i=last_id[:-1] + "\x00"),
        "id of another shape": replaced(i="' OR '1'='1"),
        "id not a string": replaced(i=["not", "an", "id"]),
        "naive time": replaced(t=moment.removesuffix("+00:00")),
        "time beyond year 9999 in UTC": replaced(t="9999-12-31T23:59:59.999999-23:59"),
        "time not a string": replaced(t=1_700_000_000),
        "an extra field": replaced(tenant="globex"),
        "a missing field": token(json.dumps({"t": moment, "i": last_id})),
        "nested JSON": token("[" * 5000 + "]" * 5000),
        "huge token": replaced(i="x" * HUGE),
        "not base64url": issued.replace("-", "+").replace("_", "/") + "+/==",
    }


@dataclass(frozen=True)
class _Listing:
    """A list RPC, a caller who sees both tenants' rows, and a request for one row a page."""

    rpc: str
    token: Callable[[World], str]
    request: Callable[[str], Message]


_LISTINGS = (
    _Listing(
        _S + "ListSubscriptions",
        lambda world: world.tokens.operator,
        lambda page_token: subscription_pb.ListSubscriptionsRequest(
            page_size=1, page_token=page_token
        ),
    ),
    _Listing(
        _D + "ListDeliveries",
        lambda world: world.tokens.platform,
        lambda page_token: dispatcher_pb.ListDeliveriesRequest(page_size=1, page_token=page_token),
    ),
)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_a_forged_page_token_is_an_invalid_argument_naming_the_page_token(
    backend: str, world: World
) -> None:
    """Before page tokens were checked strictly, a lone surrogate (SQLite) or a NUL
    (PostgreSQL) in a token's id answered INTERNAL on both list RPCs."""
    wrong: list[str] = []
    calls = 0
    for listing in _LISTINGS:
        issued = await _issued_page_token(world, listing)
        for label, forged in _forged_from(issued).items():
            calls += 1
            request, outcome = await _listed(world, listing, page_token=forged)
            problems = _problems(world, RPCS[listing.rpc], listing.token(world), [request], outcome)
            if outcome.code != Code.INVALID_ARGUMENT or "page_token" not in outcome.violations:
                got = f"{outcome.code.name}: {outcome.details[:200]!r} {outcome.violations}"
                problems.append(f"expected INVALID_ARGUMENT on page_token, got {got}")
            wrong += [f"{_short(listing.rpc)}, {label}: {problem}" for problem in problems]
    await _assert_still_serving(world)
    report_cases(f"forged page tokens [{backend}]: {calls} calls over {len(_LISTINGS)} RPCs")
    assert not wrong, f"{len(wrong)} of {calls} calls went wrong:\n" + "\n".join(wrong)


async def _listed(world: World, listing: _Listing, *, page_token: str) -> tuple[Message, Outcome]:
    request = listing.request(page_token)
    method = RPCS[listing.rpc]
    payload = request.SerializeToString()
    return request, await _invoke(world, method, [payload], auth(listing.token(world)))


async def _issued_page_token(world: World, listing: _Listing) -> str:
    """A token the service issued for the second page; it still gets that page (the control
    that shows the forgeries are refused for what was forged)."""
    _, first = await _listed(world, listing, page_token="")
    assert first.code == Code.OK, f"{listing.rpc}: {first.code.name} {first.details!r}"
    [response] = first.responses
    issued = cast(Any, response).next_page_token
    assert isinstance(issued, str)
    assert issued, "two rows listed one a page must leave a next page"
    _, second = await _listed(world, listing, page_token=issued)
    assert second.code == Code.OK, f"{listing.rpc}: {second.code.name} {second.details!r}"
    return issued
