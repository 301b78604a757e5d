"""Authentication, tenant isolation and secrets, on real servers over loopback.

test_grpc_fuzz already sends bad tokens and other tenants' ids to every RPC and checks the
status codes and that responses leak no other tenant's data. This file covers what it does
not: presented tokens and subscription secrets never appear in any answer or log line; a
refusal for another tenant's resource reads exactly like one for a resource that does not
exist (no existence oracle); the HTTP surface, route by route; and the deliveries as
POSTed never carry a secret.

Like test_grpc_fuzz, the RPCs come from the service descriptors and the HTTP routes from
the application's router: a new RPC or route fails the inventory tests until it is
classified here.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from dispatcher_service.http_api import MAX_HEADER_FIELD_BYTES
from dispatcher_service.server import RunningDispatcher
from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.integration.conftest import Metadata, auth, routed
from tests.receiver import Receiver
from webhooks.v1 import caller_service_pb2 as caller_pb
from webhooks.v1 import dispatcher_service_pb2 as dispatcher_pb
from webhooks.v1 import subscription_service_pb2 as subscription_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import (
        SubscriptionServiceAsyncStub as SubscriptionStub,
    )
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import (
        SubscriptionServiceStub as SubscriptionStub,
    )


@pytest.fixture
def backend() -> str:
    """SQLite only: what is checked here does not depend on the database."""
    return "sqlite"


Code = grpc.StatusCode
TIMEOUT = 5.0
NOTE = "event.note.created.v1"  # valid with empty details
SECRETS = {
    "acme": "whsec_" + base64.b64encode(b"acme-secret-bytes-0123456789abcd").decode(),
    "globex": "whsec_" + base64.b64encode(b"globex-secret-bytes-0123456789ab").decode(),
}
ROTATED_SECRET = "whsec_" + base64.b64encode(b"acme-rotated-secret-0123456789ab").decode()
GLOBEX_PUBLISHER = Tokens.globex_publisher
GLOBEX_DELIVERIES = Tokens.globex_deliveries
# Presented but never issued; they must never come back in an answer or a log line.
UNKNOWN_TOKEN = "unknown-token-7f3a9c1e5b"
MALFORMED_TOKEN = "malformed-token-2d8e4a6f0c"

SERVICES = tuple(
    service
    for module in (subscription_pb, dispatcher_pb, caller_pb)
    for service in module.DESCRIPTOR.services_by_name.values()
)
RPCS: dict[str, MethodDescriptor] = {
    method.name: method for service in SERVICES for method in service.methods
}


@dataclass
class World:
    """Both servers and, for each of acme and globex, a subscription with a secret and a
    delivered event."""

    tokens: Tokens
    subscriptions: SubscriptionStub
    dispatcher: DispatcherStub
    channels: dict[str, grpc.aio.Channel]
    http: str
    receiver: Receiver
    subscription: dict[str, subscription_pb.Subscription]
    message_id: dict[str, str]
    delivery_id: dict[str, str]

    def private_texts(self, tenant: str) -> list[str]:
        """What only `tenant` (and the platform) may ever see."""
        sub = self.subscription[tenant]
        return [
            SECRETS[tenant],
            sub.id,
            sub.url,
            sub.description,
            self.message_id[tenant],
            self.delivery_id[tenant],
        ]


@pytest.fixture
async def world(
    subscription_server: RunningServer,
    dispatcher: RunningDispatcher,
    receiver: Receiver,
    tokens: Tokens,
) -> AsyncIterator[World]:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{subscription_server.port}") as sub_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{dispatcher.port}") as dispatcher_channel,
    ):
        subscriptions = SubscriptionStub(sub_channel)
        deliveries = DispatcherStub(dispatcher_channel)
        created: dict[str, subscription_pb.Subscription] = {}
        message_ids: dict[str, str] = {}
        delivery_ids: dict[str, str] = {}
        writers = {"acme": tokens.acme, "globex": tokens.globex}
        publishers = {"acme": tokens.acme_publisher, "globex": GLOBEX_PUBLISHER}
        readers = {"acme": tokens.acme_deliveries, "globex": GLOBEX_DELIVERIES}
        for tenant in ("acme", "globex"):
            answer = await subscriptions.CreateSubscription(
                subscription_pb.CreateSubscriptionRequest(
                    subscription=subscription_pb.Subscription(
                        url=receiver.url(f"/{tenant}-private-path"),
                        message_types=[NOTE],
                        secret=SECRETS[tenant],
                        description=f"{tenant}-private-description",
                    )
                ),
                metadata=auth(writers[tenant]),
                timeout=TIMEOUT,
            )
            created[tenant] = answer.subscription
            await routed(dispatcher, tenant, NOTE, 1)
            message_ids[tenant] = f"{tenant}-private-message"
            await deliveries.PublishEvent(
                dispatcher_pb.PublishEventRequest(
                    event=dispatcher_pb.Event(
                        message_id=message_ids[tenant], message_type=NOTE, details="{}"
                    )
                ),
                metadata=auth(publishers[tenant]),
                timeout=TIMEOUT,
            )
            page = await deliveries.ListDeliveries(
                dispatcher_pb.ListDeliveriesRequest(message_id=message_ids[tenant]),
                metadata=auth(readers[tenant]),
                timeout=TIMEOUT,
            )
            delivery_ids[tenant] = page.deliveries[0].id
        # Settled, so that nothing changes by itself while refused calls are checked.
        deadline = time.monotonic() + 10
        while True:
            page = await deliveries.ListDeliveries(
                dispatcher_pb.ListDeliveriesRequest(),
                metadata=auth(tokens.platform),
                timeout=TIMEOUT,
            )
            states = {d.state for d in page.deliveries}
            if len(page.deliveries) == 2 and states == {dispatcher_pb.DELIVERY_STATE_SUCCEEDED}:
                break
            assert time.monotonic() < deadline, "the seeded deliveries did not succeed"
            await asyncio.sleep(0.05)
        yield World(
            tokens=tokens,
            subscriptions=subscriptions,
            dispatcher=deliveries,
            channels={
                SERVICES[0].full_name: sub_channel,
                SERVICES[1].full_name: dispatcher_channel,
                # Both serve it; each answers from the same tokens file here.
                SERVICES[2].full_name: dispatcher_channel,
            },
            http=f"http://127.0.0.1:{dispatcher.http_port}",
            receiver=receiver,
            subscription=created,
            message_id=message_ids,
            delivery_id=delivery_ids,
        )


# --- calling any RPC by its descriptor ----------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[Message]
    trailers: str


async def invoke(
    world: World, method: MethodDescriptor, requests: Sequence[Message], metadata: Metadata
) -> Outcome:
    """Calls `method` with `requests` (one unless client-streaming); reads at most a few
    answers of a server stream, which for a valid Watch would never end."""
    channel = world.channels[method.containing_service.full_name]
    path = f"/{method.containing_service.full_name}/{method.name}"
    output = message_factory.GetMessageClass(method.output_type)
    kwargs: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": output.FromString,
    }
    responses: list[Message] = []
    call: Any
    if method.client_streaming:

        async def stream() -> AsyncIterator[Message]:
            for request in requests:
                yield request

        call = channel.stream_stream(path, **kwargs)(stream(), metadata=metadata, timeout=TIMEOUT)
    elif method.server_streaming:
        call = channel.unary_stream(path, **kwargs)(requests[0], metadata=metadata, timeout=TIMEOUT)
    else:
        call = channel.unary_unary(path, **kwargs)(requests[0], metadata=metadata, timeout=TIMEOUT)
    try:
        if method.server_streaming:
            async for response in call:
                responses.append(response)
                if len(responses) >= 3:
                    call.cancel()
                    break
        else:
            responses.append(await call)
    except grpc.aio.AioRpcError as error:
        trailers = repr(error.trailing_metadata())
        return Outcome(error.code(), error.details() or "", responses, trailers)
    if method.server_streaming and call.cancelled():
        return Outcome(Code.OK, "", responses, "")
    return Outcome(await call.code(), await call.details() or "", responses, "")


def _text(outcome: Outcome) -> str:
    """Everything a caller reads of an answer: status message, trailers, responses."""
    parts = [outcome.details, outcome.trailers]
    parts += [repr(response.SerializeToString()) for response in outcome.responses]
    parts += [str(response) for response in outcome.responses]
    return "\n".join(parts)


# --- per RPC: a call by acme that targets globex ------------------------------------------


@dataclass
class CrossTenant:
    """acme's call aimed at globex, the code it must get, and (for lookups by id) the same
    call with an id that does not exist, which must read the same."""

    token: Callable[[World], str]
    aimed_at_globex: Callable[[World], list[Message]]
    expect: grpc.StatusCode
    missing: Callable[[World], list[Message]] | None = None


def _get_sub(sub_id: str) -> list[Message]:
    return [subscription_pb.GetSubscriptionRequest(id=sub_id)]


def _update_sub(sub_id: str) -> list[Message]:
    return [
        subscription_pb.UpdateSubscriptionRequest(
            subscription=subscription_pb.Subscription(id=sub_id, description="taken over"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    ]


def _delete_sub(sub_id: str) -> list[Message]:
    return [subscription_pb.DeleteSubscriptionRequest(id=sub_id)]


def _get_delivery(delivery_id: str) -> list[Message]:
    return [dispatcher_pb.GetDeliveryRequest(id=delivery_id)]


def _redeliver(message_id: str) -> list[Message]:
    return [dispatcher_pb.RedeliverEventRequest(message_id=message_id)]


def _globex_event(message_id: str) -> dispatcher_pb.Event:
    return dispatcher_pb.Event(
        tenant="globex", message_id=message_id, message_type=NOTE, details="{}"
    )


MISSING_SUB = "sub_0000000000000000000000000"
MISSING_DELIVERY = "dlv_0000000000000000000000000"
MISSING_MESSAGE = "no-such-message-anywhere"

CROSS_TENANT: dict[str, CrossTenant] = {
    "CreateSubscription": CrossTenant(
        lambda w: w.tokens.acme,
        lambda w: [
            subscription_pb.CreateSubscriptionRequest(
                subscription=subscription_pb.Subscription(
                    tenant="globex", url="https://hooks.example.com/x", message_types=[NOTE]
                )
            )
        ],
        Code.PERMISSION_DENIED,
    ),
    "GetSubscription": CrossTenant(
        lambda w: w.tokens.acme,
        lambda w: _get_sub(w.subscription["globex"].id),
        Code.NOT_FOUND,
        lambda w: _get_sub(MISSING_SUB),
    ),
    "ListSubscriptions": CrossTenant(
        lambda w: w.tokens.acme,
        lambda w: [subscription_pb.ListSubscriptionsRequest(tenant="globex")],
        Code.PERMISSION_DENIED,
    ),
    "UpdateSubscription": CrossTenant(
        lambda w: w.tokens.acme,
        lambda w: _update_sub(w.subscription["globex"].id),
        Code.NOT_FOUND,
        lambda w: _update_sub(MISSING_SUB),
    ),
    "DeleteSubscription": CrossTenant(
        lambda w: w.tokens.acme,
        lambda w: _delete_sub(w.subscription["globex"].id),
        Code.NOT_FOUND,
        lambda w: _delete_sub(MISSING_SUB),
    ),
    "WatchSubscriptions": CrossTenant(
        lambda w: w.tokens.acme,
        lambda w: [subscription_pb.WatchSubscriptionsRequest(tenant="globex")],
        Code.PERMISSION_DENIED,
    ),
    "PublishEvent": CrossTenant(
        lambda w: w.tokens.acme_publisher,
        lambda w: [dispatcher_pb.PublishEventRequest(event=_globex_event("x-tenant-1"))],
        Code.PERMISSION_DENIED,
    ),
    # Refused per event (checked below); the stream itself ends OK.
    "PublishEvents": CrossTenant(
        lambda w: w.tokens.acme_publisher,
        lambda w: [dispatcher_pb.PublishEventsRequest(events=[_globex_event("x-tenant-2")])],
        Code.OK,
    ),
    "ListDeliveries": CrossTenant(
        lambda w: w.tokens.acme_deliveries,
        lambda w: [dispatcher_pb.ListDeliveriesRequest(tenant="globex")],
        Code.PERMISSION_DENIED,
    ),
    "GetDelivery": CrossTenant(
        lambda w: w.tokens.acme_deliveries,
        lambda w: _get_delivery(w.delivery_id["globex"]),
        Code.NOT_FOUND,
        lambda w: _get_delivery(MISSING_DELIVERY),
    ),
    "RedeliverEvent": CrossTenant(
        lambda w: w.tokens.acme_deliveries,
        lambda w: _redeliver(w.message_id["globex"]),
        Code.NOT_FOUND,
        lambda w: _redeliver(MISSING_MESSAGE),
    ),
    # Public keys are the same for every tenant; the call must still be authenticated.
    "ListSigningKeys": CrossTenant(
        lambda w: w.tokens.acme,
        lambda w: [dispatcher_pb.ListSigningKeysRequest()],
        Code.OK,
    ),
    "GetDeliveryActivity": CrossTenant(
        lambda w: w.tokens.acme_deliveries,
        lambda w: [dispatcher_pb.GetDeliveryActivityRequest(tenant="globex")],
        Code.PERMISSION_DENIED,
    ),
    # A token asks about itself: there is nothing of globex to aim at.
    "GetCaller": CrossTenant(
        lambda w: w.tokens.acme,
        lambda w: [caller_pb.GetCallerRequest()],
        Code.OK,
    ),
}


def test_every_rpc_has_a_cross_tenant_case() -> None:
    assert {s.full_name for s in SERVICES} == {
        "webhooks.v1.SubscriptionService",
        "webhooks.v1.DispatcherService",
        "webhooks.v1.CallerService",
    }
    assert set(CROSS_TENANT) == set(RPCS), (
        f"RPCs without a case: {sorted(set(RPCS) - set(CROSS_TENANT))}; "
        f"cases without an RPC: {sorted(set(CROSS_TENANT) - set(RPCS))}"
    )


def _bad_credentials(valid: str) -> dict[str, Metadata]:
    return {
        "no token": (),
        "malformed header": (("authorization", f"Token {MALFORMED_TOKEN}"),),
        "basic scheme": (("authorization", "Basic " + base64.b64encode(b"a:b").decode()),),
        "scheme only": (("authorization", "Bearer"),),
        "unknown token": auth(UNKNOWN_TOKEN),
        "a valid token without its scheme": (("authorization", valid),),
    }


async def test_unauthenticated_calls_are_refused_on_every_rpc_and_echo_no_token(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong: list[str] = []
    for name, method in sorted(RPCS.items()):
        case = CROSS_TENANT[name]
        valid = case.token(world)
        for label, metadata in _bad_credentials(valid).items():
            outcome = await invoke(world, method, case.aimed_at_globex(world), metadata)
            if outcome.code != Code.UNAUTHENTICATED:
                wrong.append(f"{name}, {label}: {outcome.code.name} {outcome.details!r}")
            if outcome.responses:
                wrong.append(f"{name}, {label}: answered {len(outcome.responses)} responses")
            text = _text(outcome)
            for presented in (UNKNOWN_TOKEN, MALFORMED_TOKEN, valid):
                if presented in text:
                    wrong.append(f"{name}, {label}: the answer echoes {presented!r}")
    assert not wrong, "\n".join(wrong)
    for presented in (UNKNOWN_TOKEN, MALFORMED_TOKEN):
        assert presented not in caplog.text


async def test_cross_tenant_calls_are_refused_on_every_rpc_without_an_existence_oracle(
    world: World,
) -> None:
    before = await _globex_state(world)
    wrong: list[str] = []
    for name, method in sorted(RPCS.items()):
        case = CROSS_TENANT[name]
        token = case.token(world)
        outcome = await invoke(world, method, case.aimed_at_globex(world), auth(token))
        if outcome.code != case.expect:
            wrong.append(f"{name}: expected {case.expect.name}, got {outcome.code.name}")
        text = _text(outcome)
        for private in world.private_texts("globex"):
            # An id the caller sent may come back in a NOT_FOUND message; nothing else may.
            sent = any(private in str(request) for request in case.aimed_at_globex(world))
            if private in text and not sent:
                wrong.append(f"{name}: the answer shows globex's {private!r}")
        if name == "PublishEvents":
            results = [r for response in outcome.responses for r in response.results]  # type: ignore[attr-defined]
            if [r.error.code for r in results] != ["PERMISSION_DENIED"]:
                wrong.append(f"PublishEvents: per-event results {results}")
        if case.missing is not None:
            absent = await invoke(world, method, case.missing(world), auth(token))
            same = _without_ids(outcome.details, world) == _without_ids(absent.details, world)
            if absent.code != outcome.code or not same:
                wrong.append(
                    f"{name}: another tenant's resource answers {outcome.code.name} "
                    f"{outcome.details!r}, a missing one {absent.code.name} {absent.details!r}"
                )
    assert not wrong, "\n".join(wrong)
    assert await _globex_state(world) == before, "a refused call changed globex's data"


def _without_ids(text: str, world: World) -> str:
    for value in (
        world.subscription["globex"].id,
        world.delivery_id["globex"],
        world.message_id["globex"],
        MISSING_SUB,
        MISSING_DELIVERY,
        MISSING_MESSAGE,
    ):
        text = text.replace(value, "<id>")
    return text


async def _globex_state(world: World) -> list[object]:
    subscription = await world.subscriptions.GetSubscription(
        subscription_pb.GetSubscriptionRequest(id=world.subscription["globex"].id),
        metadata=auth(world.tokens.globex),
        timeout=TIMEOUT,
    )
    deliveries = await world.dispatcher.ListDeliveries(
        dispatcher_pb.ListDeliveriesRequest(),
        metadata=auth(GLOBEX_DELIVERIES),
        timeout=TIMEOUT,
    )
    return [
        subscription.subscription.etag,
        sorted((d.id, d.message_id, d.state, d.attempt_count) for d in deliveries.deliveries),
    ]


# --- secrets ---------------------------------------------------------------------------------


def _no_secret(where: str, message: Message | str, *secrets: str) -> list[str]:
    text = message if isinstance(message, str) else f"{message}\n{message.SerializeToString()!r}"
    return [f"{where} shows a secret" for secret in secrets if secret in text]


async def test_a_secret_never_comes_back_from_the_subscription_api(world: World) -> None:
    t, s = world.tokens, world.subscriptions
    secret = SECRETS["acme"]
    acme_id = world.subscription["acme"].id
    leaks: list[str] = []
    created = await s.CreateSubscription(
        subscription_pb.CreateSubscriptionRequest(
            subscription=subscription_pb.Subscription(
                url="https://hooks.example.com/new", message_types=[NOTE], secret=ROTATED_SECRET
            )
        ),
        metadata=auth(t.acme),
        timeout=TIMEOUT,
    )
    assert created.subscription.has_secret
    leaks += _no_secret("Create", created, ROTATED_SECRET)
    for token in (t.acme, t.acme_reader, t.operator):
        got = await s.GetSubscription(
            subscription_pb.GetSubscriptionRequest(id=acme_id), metadata=auth(token)
        )
        assert got.subscription.has_secret
        leaks += _no_secret("Get", got, secret)
        listed = await s.ListSubscriptions(
            subscription_pb.ListSubscriptionsRequest(), metadata=auth(token)
        )
        leaks += _no_secret("List", listed, secret, ROTATED_SECRET, SECRETS["globex"])
    updated = await s.UpdateSubscription(
        subscription_pb.UpdateSubscriptionRequest(
            subscription=subscription_pb.Subscription(id=acme_id, secret=ROTATED_SECRET),
            update_mask=field_mask_pb2.FieldMask(paths=["secret"]),
        ),
        metadata=auth(t.acme),
    )
    leaks += _no_secret("Update of the secret", updated, secret, ROTATED_SECRET)
    for token in (t.acme, t.operator):  # only the platform's admin token gets secrets
        watch = world.subscriptions.WatchSubscriptions(
            subscription_pb.WatchSubscriptionsRequest(), metadata=auth(token), timeout=TIMEOUT
        )
        async for change in watch:
            leaks += _no_secret("Watch", change, secret, ROTATED_SECRET, SECRETS["globex"])
            if change.change_type == change.CHANGE_TYPE_SNAPSHOT_COMPLETE:
                watch.cancel()
                break
    assert not leaks, leaks


async def test_a_secret_never_appears_in_an_error(world: World) -> None:
    acme_id = world.subscription["acme"].id
    short = "whsec_" + base64.b64encode(b"too-short-secret").decode()
    prefixless = "sk_" + base64.b64encode(b"a-secret-without-the-prefix-0123").decode()
    calls: list[tuple[str, Any]] = []
    for bad_secret in (short, prefixless, SECRETS["acme"] + "!"):
        calls += [
            (
                bad_secret,
                world.subscriptions.CreateSubscription(
                    subscription_pb.CreateSubscriptionRequest(
                        subscription=subscription_pb.Subscription(
                            url="https://hooks.example.com/x",
                            message_types=[NOTE],
                            secret=bad_secret,
                        )
                    ),
                    metadata=auth(world.tokens.acme),
                    timeout=TIMEOUT,
                ),
            ),
            (
                bad_secret,
                world.subscriptions.UpdateSubscription(
                    subscription_pb.UpdateSubscriptionRequest(
                        subscription=subscription_pb.Subscription(id=acme_id, secret=bad_secret),
                        update_mask=field_mask_pb2.FieldMask(paths=["secret"]),
                    ),
                    metadata=auth(world.tokens.acme),
                    timeout=TIMEOUT,
                ),
            ),
        ]
    # A good secret in a request refused for another field.
    calls.append(
        (
            ROTATED_SECRET,
            world.subscriptions.CreateSubscription(
                subscription_pb.CreateSubscriptionRequest(
                    subscription=subscription_pb.Subscription(
                        url="ftp://hooks.example.com/x", message_types=[NOTE], secret=ROTATED_SECRET
                    )
                ),
                metadata=auth(world.tokens.acme),
                timeout=TIMEOUT,
            ),
        )
    )
    for secret, call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == Code.INVALID_ARGUMENT
        shown = f"{refused.value.details()}\n{refused.value.trailing_metadata()!r}"
        assert secret not in shown
        assert secret.removeprefix("whsec_") not in shown


async def test_the_dispatcher_never_shows_a_secret(world: World) -> None:
    secrets = tuple(SECRETS.values())
    leaks: list[str] = []
    page = await world.dispatcher.ListDeliveries(
        dispatcher_pb.ListDeliveriesRequest(), metadata=auth(world.tokens.platform)
    )
    leaks += _no_secret("ListDeliveries", page, *secrets)
    for delivery_id in world.delivery_id.values():
        got = await world.dispatcher.GetDelivery(
            dispatcher_pb.GetDeliveryRequest(id=delivery_id), metadata=auth(world.tokens.platform)
        )
        leaks += _no_secret("GetDelivery", got, *secrets)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        for path in await _public_paths(session, world):
            async with session.get(world.http + path) as response:
                leaks += _no_secret(f"GET {path}", await response.text(), *secrets)
        body = {"details": {"messageType": NOTE}, "messageId": "m", "timestamp": "x"}
        async with session.post(
            world.http + "/v1/events", json=body, headers=_bearer(world.tokens.acme_publisher)
        ) as response:
            assert response.status == 400
            leaks += _no_secret("POST /v1/events", await response.text(), *secrets)
    # What receivers got: signed with the secret (webhook-signature), never the secret.
    for request in world.receiver.requests:
        shown = f"{dict(request.headers)!r}\n{request.body!r}"
        leaks += _no_secret("a delivery", shown, *secrets, *(s[6:] for s in secrets))
        assert "webhook-signature" in {name.lower() for name in request.headers}
    assert not leaks, leaks


# --- HTTP ----------------------------------------------------------------------------------

AUTHENTICATED_ROUTES = {("POST", "/v1/events")}
PUBLIC_ROUTES = {
    ("GET", "/v1/contracts/{message_type}"),
    ("GET", "/openapi.json"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/v1/signing-keys/{key_id}.pem"),
}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _public_paths(session: aiohttp.ClientSession, world: World) -> list[str]:
    async with session.get(world.http + "/.well-known/jwks.json") as response:
        keys = (await response.json())["keys"]
    assert keys
    return [
        "/openapi.json",
        "/.well-known/jwks.json",
        f"/v1/contracts/{NOTE}",
        *(f"/v1/signing-keys/{key['kid']}.pem" for key in keys),
    ]


def test_every_http_route_is_classified(dispatcher: RunningDispatcher) -> None:
    app = dispatcher.http._runner.app
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    assert routes == AUTHENTICATED_ROUTES | PUBLIC_ROUTES, routes


async def test_http_publishing_refuses_bad_credentials_and_other_tenants(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = await _globex_state(world)
    body = {
        "details": {"messageType": NOTE},
        "messageId": "http-x-tenant",
        "timestamp": "2026-11-29T07:00:00.000Z",
    }
    valid = world.tokens.acme_publisher
    unauthenticated: dict[str, list[tuple[str, str]]] = {
        "no header": [],
        "empty header": [("Authorization", "")],
        "malformed header": [("Authorization", f"Token {MALFORMED_TOKEN}")],
        "basic scheme": [("Authorization", "Basic YTpi")],
        "scheme only": [("Authorization", "Bearer")],
        "unknown token": [("Authorization", f"Bearer {UNKNOWN_TOKEN}")],
        "a valid token without its scheme": [("Authorization", valid)],
        "two headers": [("Authorization", f"Bearer {valid}")] * 2,
        "token in the query": [],
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        for label, headers in unauthenticated.items():
            url = world.http + "/v1/events"
            if label == "token in the query":
                url += f"?access_token={valid}"
            async with session.post(url, json=body, headers=headers) as response:
                text = await response.text()
                assert response.status == 401, (label, text)
                assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), label
                for presented in (UNKNOWN_TOKEN, MALFORMED_TOKEN, valid):
                    assert presented not in text, (label, presented)
        refused = {
            "another tenant": (valid, "globex", 403),
            "a token without the publish scope": (world.tokens.acme, None, 403),
            "another tenant's writer token": (world.tokens.globex, None, 403),
        }
        for label, (token, tenant, status) in refused.items():
            params = {"tenant": tenant} if tenant else {}
            async with session.post(
                world.http + "/v1/events", json=body, headers=_bearer(token), params=params
            ) as response:
                text = await response.text()
                assert response.status == status, (label, text)
                assert token not in text
                for private in world.private_texts("globex"):
                    assert private not in text, (label, private)
    assert await _globex_state(world) == before
    assert "http-x-tenant" not in str(await _globex_state(world))
    for presented in (UNKNOWN_TOKEN, MALFORMED_TOKEN, valid):
        assert presented not in caplog.text


async def test_public_routes_serve_no_tenant_data(world: World) -> None:
    private = [text for tenant in ("acme", "globex") for text in world.private_texts(tenant)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        paths = await _public_paths(session, world)
        for path in paths:
            for headers in ({}, _bearer(world.tokens.platform)):
                async with session.get(world.http + path, headers=headers) as response:
                    text = await response.text()
                    assert response.status == 200, (path, text[:200])
                    shown = [p for p in private if p in text]
                    assert not shown, (path, shown)
                    assert not re.search(r"\b(acme|globex)\b", text), path
                    assert world.tokens.platform not in text


async def test_an_oversized_authorization_header_is_not_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await _oversized_authorization(world)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert UNKNOWN_TOKEN not in caplog.text
    assert "refused, LineTooLong" in caplog.text


@pytest.mark.xfail(
    strict=True,
    reason="aiohttp answers a header line past max_field_size with a 400 quoting its first "
    "100 bytes, token included; only its log line can be quieted from the application",
)
async def test_an_oversized_authorization_header_is_not_echoed(world: World) -> None:
    answer = await _oversized_authorization(world)
    assert UNKNOWN_TOKEN.encode() not in answer


async def _oversized_authorization(world: World) -> bytes:
    value = f"Bearer {UNKNOWN_TOKEN}".encode() + b"x" * MAX_HEADER_FIELD_BYTES
    return await _raw_post(world, b"Content-Length: 0\r\nAuthorization: " + value)


async def _raw_post(world: World, headers: bytes, *, until_closed: bool = True) -> bytes:
    """A POST /v1/events written byte for byte: what the server answers until it closes the
    connection, or only its status line."""
    port = int(world.http.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n\r\n")
        await writer.drain()
        answer = reader.read() if until_closed else reader.readline()
        return await asyncio.wait_for(answer, TIMEOUT)
    finally:
        writer.close()


async def test_a_token_that_is_no_utf8_is_a_401_and_logs_no_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for token in (b"\xff\xfe", b"ok\xc3\x28", "caf\u00e9".encode()):
        headers = b"Connection: close\r\nContent-Length: 0\r\nAuthorization: Bearer "
        answer = await _raw_post(world, headers + token)
        assert answer.split(b"\r\n", 1)[0].endswith(b" 401 Unauthorized"), (token, answer)
        assert b"WWW-Authenticate: Bearer" in answer
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_body_announced_past_the_limit_is_a_413_at_once(world: World) -> None:
    started = time.monotonic()
    status_line = await _raw_post(
        world,
        b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n"
        + b"Authorization: Bearer "
        + world.tokens.acme_publisher.encode(),
        until_closed=False,
    )
    assert status_line.startswith(b"HTTP/1.1 413 "), status_line
    # Not after a timeout of the server's or the client's: no byte of the body was sent.
    assert time.monotonic() - started < TIMEOUT / 2
