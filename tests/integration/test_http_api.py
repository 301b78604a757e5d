"""The dispatcher's HTTP surface on a real dispatcher, with a real receiver: ingestion of one
event as JSON, problem details, authentication, contracts, the OpenAPI document, public keys."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from dispatcher_service.http_api import MAX_BODY_BYTES
from dispatcher_service.ingest import MAX_MESSAGE_ID_LENGTH
from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth, routed
from tests.integration.test_dispatcher import claim_details, subscribe
from tests.receiver import Receiver
from webhook_contracts import build_openapi, load_registry
from webhook_contracts.openapi_http import MAX_MESSAGE_ID_LENGTH as DOCUMENTED_ID_LENGTH
from webhook_receiver import load_public_key, public_jwk, same_json, verify_webhook
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

CLAIM_CREATED = "event.claim.created.v1"
NOTE_CREATED = "event.note.created.v1"
PROBLEM = "application/problem+json"
TIMEOUT = aiohttp.ClientTimeout(total=10)
EARLY = "0999-01-02T03:04:05.006Z"


@dataclass
class Http:
    """Requests to the dispatcher's HTTP port."""

    session: aiohttp.ClientSession
    base: str

    async def publish(
        self, body: object, token: str | None, *, tenant: str | None = None
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        params = {"tenant": tenant} if tenant is not None else {}
        async with self.session.post(
            f"{self.base}/v1/events", json=body, headers=headers, params=params
        ) as response:
            return response.status, await response.json(content_type=None), response.headers

    async def send(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, str, bytes, Mapping[str, str]]:
        async with self.session.request(method, f"{self.base}{path}", **kwargs) as response:
            return response.status, response.content_type, await response.read(), response.headers


@pytest.fixture
async def http(dispatcher: RunningDispatcher) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield Http(session, f"http://127.0.0.1:{dispatcher.http_port}")


def claim(message_id: str, **details: Any) -> dict[str, Any]:
    """A POST /v1/events body: the payload of an event.claim.created.v1."""
    return {
        "details": {**claim_details(), **details},
        "messageId": message_id,
        "timestamp": "2021-10-14T15:33:16.848Z",
        "user": {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"},
    }


async def stored_deliveries(dispatcher: RunningDispatcher, token: str) -> list[str]:
    async with DispatcherStubChannel(dispatcher) as stub:
        listed = await stub.ListDeliveries(pb.ListDeliveriesRequest(), metadata=auth(token))
    return [d.message_id for d in listed.deliveries]


class DispatcherStubChannel:
    def __init__(self, dispatcher: RunningDispatcher) -> None:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{dispatcher.port}")

    async def __aenter__(self) -> DispatcherStub:
        return DispatcherStub(self._channel)

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close(None)


def problem_fields(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem.get("errors", [])]


def assert_problem(status: int, problem: dict[str, Any], expected: int) -> None:
    assert status == expected, problem
    assert problem["status"] == expected
    assert problem["type"] == "about:blank"
    assert problem["title"]
    assert problem["detail"]


async def test_a_published_event_arrives_signed_and_verifiable_with_the_served_pem(
    stub: Stub, dispatcher: RunningDispatcher, http: Http, receiver: Receiver, tokens: Tokens
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/claims"), CLAIM_CREATED)
    await subscribe(stub, tokens.acme, receiver.url("/notes"), NOTE_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    # Anything JSON can carry arrives as sent, a NUL character too (the stored text escapes it).
    sent = {**claim("http-1", amount=501, note="a\x00b", big=2**63 - 1), "timestamp": EARLY}

    status, answer, headers = await http.publish(sent, tokens.acme_publisher)

    assert status == 202
    assert headers["Content-Type"].startswith("application/json")
    assert answer == {"messageId": "http-1", "outcome": "accepted", "deliveries": 1}
    (request,) = await receiver.wait_for(1, path="/claims")
    key_id = request.headers["webhook-key-id"]
    code, content_type, pem, _ = await http.send("GET", f"/v1/signing-keys/{key_id}.pem")
    assert (code, content_type) == (200, "application/x-pem-file")
    webhook = verify_webhook(request.body, pem)  # signature, payloadAsString, contract
    # Receivers get exactly the payload that was posted.
    assert same_json(dict(webhook.payload), sent)
    assert isinstance(webhook.details["amount"], int)
    assert request.headers["webhook-id"] == "http-1"
    await asyncio.sleep(0.3)
    assert receiver.on("/notes") == []


async def test_a_duplicate_is_answered_202_duplicate_and_delivered_once(
    stub: Stub, dispatcher: RunningDispatcher, http: Http, receiver: Receiver, tokens: Tokens
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/once"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)

    first = await http.publish(claim("dup"), tokens.acme_publisher)
    again = await http.publish(claim("dup", amount=2), tokens.acme_publisher)

    assert first[:2] == (202, {"messageId": "dup", "outcome": "accepted", "deliveries": 1})
    assert again[:2] == (202, {"messageId": "dup", "outcome": "duplicate", "deliveries": 0})
    (request,) = await receiver.wait_for(1)
    assert json.loads(request.body)["payload"]["details"]["amount"] == 1000
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1


def _without(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != name}


INVALID_EVENTS = {
    "contract": (claim("bad", amount="five hundred"), ["details.amount"]),
    "unknown type": (
        {**claim("bad"), "details": {"messageType": "event.claim.exploded.v1"}},
        ["details.messageType"],
    ),
    "no type": ({**claim("bad"), "details": {"claimRef": "C"}}, ["details.messageType"]),
    "details not an object": ({**claim("bad"), "details": [1]}, ["details"]),
    "message id with a space": (claim("two words"), ["messageId"]),
    "message id too long": (claim("x" * (MAX_MESSAGE_ID_LENGTH + 1)), ["messageId"]),
    "message id missing": (_without(claim("bad"), "messageId"), ["messageId"]),
    "message id a number": ({**claim("bad"), "messageId": 7}, ["messageId"]),
    "timestamp missing": (_without(claim("bad"), "timestamp"), ["timestamp"]),
    "timestamp empty": ({**claim("bad"), "timestamp": ""}, ["timestamp"]),
    "timestamp null": ({**claim("bad"), "timestamp": None}, ["timestamp"]),
    "timestamp not canonical": (
        {**claim("bad"), "timestamp": "2021-10-14T15:33:16+00:00"},
        ["timestamp"],
    ),
    "unknown member": ({**claim("bad"), "signature": "c2ln"}, ["signature"]),
    "user null": ({**claim("bad"), "user": None}, ["user"]),
    "user incomplete": ({**claim("bad"), "user": {"id": "U"}}, ["user.poolId", "user.originator"]),
    "user extra member": (
        {**claim("bad"), "user": {"id": "U", "poolId": "P", "originator": "O", "role": "x"}},
        ["user.role"],
    ),
    "integer beyond 64 bits": (claim("bad", extra=2**70), ["details.extra"]),
    "integer beyond 63 bits": (claim("bad", extra=[0, -(2**63) - 1]), ["details.extra[1]"]),
    "timestamp offset past 9999": (
        {**claim("bad"), "timestamp": "9999-12-31T23:59:59.999-23:59"},
        ["timestamp"],
    ),
    "timestamp offset before year 1": (
        {**claim("bad"), "timestamp": "0001-01-01T00:00:00.000+23:59"},
        ["timestamp"],
    ),
    "not an object": (["an", "array"], ["body"]),
}


async def test_an_invalid_event_is_a_400_problem_naming_its_json_fields_and_is_not_stored(
    stub: Stub, dispatcher: RunningDispatcher, http: Http, receiver: Receiver, tokens: Tokens
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/in"), "event.*")
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    for case, (body, fields) in INVALID_EVENTS.items():
        status, problem, headers = await http.publish(body, tokens.acme_publisher)

        assert status == 400, (case, problem)
        assert_problem(status, problem, 400)
        assert headers["Content-Type"] == PROBLEM, case
        assert problem_fields(problem) == fields, (case, problem)
        assert all(error["message"] for error in problem["errors"]), case
    assert await stored_deliveries(dispatcher, tokens.acme_deliveries) == []
    assert receiver.requests == []


def _claim_text(details: str) -> bytes:
    """A claim's body with `details` members written as raw JSON text, which Python's json
    module could not write."""
    body = json.dumps(claim("raw", extra="EXTRA"))
    return body.replace('"EXTRA"', details).encode()


# Bodies whose numbers, keys or nesting JSON cannot carry unchanged: each is refused naming
# where, as over gRPC, never stored with a number turned into another (1e999 into null).
UNFAITHFUL_JSON = {
    "overflowing number": (_claim_text("1e999"), "details.extra"),
    "negative overflowing number": (_claim_text("[1, -1e999]"), "details.extra[1]"),
    "overflowing exponent": (_claim_text('{"amount": 1E400}'), "details.extra.amount"),
    "Infinity": (_claim_text("Infinity"), "details.extra"),
    "integer beyond 64 bits as text": (_claim_text("18446744073709551616"), "details.extra"),
    "repeated key in details": (_claim_text('{"a": 1, "a": 2}'), "details.extra"),
    "repeated key, spaced": (_claim_text('{"a" : 1, "a" : 2}'), "details.extra"),
    "lone surrogate": (_claim_text('"\\ud800"'), "details.extra"),
    "lone surrogate in user.id": (
        json.dumps(claim("raw")).replace('"USER_ID"', '"\\ud800"').encode(),
        "user.id",
    ),
    "deep details": (_claim_text("[" * 40 + "]" * 40), "details.extra"),
    "the issue's deep details": (
        _claim_text("[" * 990 + "1234567890123456789" + "]" * 990),
        "details",
    ),
}


async def test_json_that_cannot_travel_unchanged_is_a_400_naming_where_and_is_not_stored(
    stub: Stub, dispatcher: RunningDispatcher, http: Http, receiver: Receiver, tokens: Tokens
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/in"), "event.*")
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    for case, (data, field) in UNFAITHFUL_JSON.items():
        status, content_type, body, _ = await http.send(
            "POST",
            "/v1/events",
            data=data,
            headers={"Content-Type": "application/json", **_bearer(tokens.acme_publisher)},
        )
        problem = json.loads(body)
        assert (status, content_type) == (400, PROBLEM), (case, problem)
        assert problem_fields(problem) == [field], (case, problem)
    assert await stored_deliveries(dispatcher, tokens.acme_deliveries) == []
    assert receiver.requests == []


def _nested_details(depth: int) -> bytes:
    return json.dumps(claim("deep", deep=[])).replace("[]", "[" * depth + "]" * depth).encode()


NOT_EVENTS = {
    "broken JSON": (b'{"messageId": ', "application/json", 400),
    "empty": (b"", "application/json", 400),
    "NaN": (b'{"messageId": NaN}', "application/json", 400),
    "duplicate keys": (b'{"messageId": "a", "messageId": "b"}', "application/json", 400),
    "not UTF-8": (b'{"messageId": "\xff"}', "application/json", 400),
    "nested beyond the parser": (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
    "nested within the parser": (_nested_details(900), "application/json", 400),
    "form": (b"messageId=1", "application/x-www-form-urlencoded", 415),
    "text": (b"{}", "text/plain", 415),
    "no content type": (b"{}", "", 415),
    "too large": (b'{"x": "' + b"y" * MAX_BODY_BYTES + b'"}', "application/json", 413),
}


async def test_a_body_that_is_not_an_event_is_a_4xx_problem(http: Http, tokens: Tokens) -> None:
    for case, (data, content_type, expected) in NOT_EVENTS.items():
        headers = {"Content-Type": content_type} if content_type else {}
        status, answered_type, body, _ = await http.send(
            "POST",
            "/v1/events",
            data=data,
            headers={**headers, **_bearer(tokens.acme_publisher)},
            skip_auto_headers=["Content-Type"],
        )
        assert (status, answered_type) == (expected, PROBLEM), (case, body)
        assert_problem(status, json.loads(body), expected)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_publishing_needs_a_valid_bearer_token_with_the_publish_scope(
    http: Http, tokens: Tokens
) -> None:
    status, problem, headers = await http.publish(claim("a-1"), None)
    assert_problem(status, problem, 401)
    assert headers["WWW-Authenticate"].startswith("Bearer")

    status, problem, headers = await http.publish(claim("a-2"), "not-a-token")
    assert_problem(status, problem, 401)
    assert headers["WWW-Authenticate"].startswith("Bearer")

    code, _, raw, _ = await http.send(
        "POST", "/v1/events", json=claim("a-3"), headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )
    assert_problem(code, json.loads(raw), 401)

    status, problem, _ = await http.publish(claim("a-4"), tokens.acme_reader)
    assert_problem(status, problem, 403)
    assert "publish" in problem["detail"]


async def test_a_tenant_publishes_only_for_itself_and_a_platform_token_names_the_tenant(
    stub: Stub, dispatcher: RunningDispatcher, http: Http, receiver: Receiver, tokens: Tokens
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/acme"), CLAIM_CREATED)
    await subscribe(stub, tokens.globex, receiver.url("/globex"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await routed(dispatcher, "globex", CLAIM_CREATED, 1)

    status, problem, _ = await http.publish(claim("t-1"), tokens.acme_publisher, tenant="globex")
    assert_problem(status, problem, 403)

    status, problem, _ = await http.publish(claim("t-2"), tokens.platform)
    assert_problem(status, problem, 400)
    assert problem_fields(problem) == ["tenant"]

    status, problem, _ = await http.publish(claim("t-3"), tokens.platform, tenant="no spaces")
    assert_problem(status, problem, 400)
    assert problem_fields(problem) == ["tenant"]

    code, _, raw, _ = await http.send(
        "POST",
        "/v1/events?tenant=acme&tenant=globex",
        json=claim("t-4"),
        headers=_bearer(tokens.platform),
    )
    assert_problem(code, json.loads(raw), 400)

    status, answer, _ = await http.publish(claim("t-5"), tokens.platform, tenant="globex")
    assert (status, answer["outcome"]) == (202, "accepted")
    status, answer, _ = await http.publish(claim("t-6"), tokens.acme_publisher, tenant="acme")
    assert (status, answer["outcome"]) == (202, "accepted")

    arrived = await receiver.wait_for(2)
    assert sorted((r.path, r.headers["webhook-id"]) for r in arrived) == [
        ("/acme", "t-6"),
        ("/globex", "t-5"),
    ]
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 2


async def test_publishing_before_the_routing_table_is_loaded_is_503_with_retry_after(
    dispatcher_settings: DispatcherSettings, tokens: Tokens
) -> None:
    with socket.socket() as unused:  # a port nobody listens on: the follower never gets ready
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    running = await create_dispatcher(
        dispatcher_settings.model_copy(update={"subscriptions_addr": f"127.0.0.1:{port}"})
    )
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            http = Http(session, f"http://127.0.0.1:{running.http_port}")
            status, problem, headers = await http.publish(claim("early"), tokens.acme_publisher)
    finally:
        await running.stop(0)
    assert_problem(status, problem, 503)
    assert int(headers["Retry-After"]) > 0


async def test_contracts_are_served_self_contained_and_unknown_types_are_404(
    http: Http,
) -> None:
    status, content_type, body, _ = await http.send("GET", f"/v1/contracts/{CLAIM_CREATED}")
    assert (status, content_type) == (200, "application/schema+json")
    assert json.loads(body) == load_registry().bundle(CLAIM_CREATED)

    status, content_type, body, _ = await http.send("GET", "/v1/contracts/event.nope.v1")
    assert content_type == PROBLEM
    assert_problem(status, json.loads(body), 404)


async def test_the_openapi_document_is_valid_and_has_one_body_variant_per_message_type(
    http: Http,
) -> None:
    status, content_type, body, _ = await http.send("GET", "/openapi.json")
    assert (status, content_type) == (200, "application/json")
    document = json.loads(body)
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document == build_openapi(load_registry())
    publish = document["paths"]["/v1/events"]["post"]
    variants = publish["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert len(variants) == len(load_registry().message_types)
    assert DOCUMENTED_ID_LENGTH == MAX_MESSAGE_ID_LENGTH


async def test_the_jwks_matches_list_signing_keys_and_each_key_is_served_as_pem(
    dispatcher: RunningDispatcher, http: Http, tokens: Tokens
) -> None:
    status, content_type, body, _ = await http.send("GET", "/.well-known/jwks.json")
    assert (status, content_type) == (200, "application/json")
    jwks = json.loads(body)["keys"]
    async with DispatcherStubChannel(dispatcher) as grpc_stub:
        listed = await grpc_stub.ListSigningKeys(
            pb.ListSigningKeysRequest(), metadata=auth(tokens.acme)
        )
    assert [jwk["kid"] for jwk in jwks] == [key.key_id for key in listed.keys]
    assert {jwk["alg"] for jwk in jwks} == {"ES256", "RS256"}
    for jwk, key in zip(jwks, listed.keys, strict=True):
        assert jwk == public_jwk(load_public_key(key.public_key_pem))
        status, _, pem, _ = await http.send("GET", f"/v1/signing-keys/{key.key_id}.pem")
        assert (status, pem.decode()) == (200, key.public_key_pem)

    status, content_type, body, _ = await http.send("GET", "/v1/signing-keys/nope.pem")
    assert content_type == PROBLEM
    assert_problem(status, json.loads(body), 404)


async def test_unknown_paths_and_methods_are_problems_too(http: Http) -> None:
    status, content_type, body, _ = await http.send("GET", "/v1/nothing-here")
    assert content_type == PROBLEM
    assert_problem(status, json.loads(body), 404)

    status, content_type, body, headers = await http.send("DELETE", "/v1/events")
    assert content_type == PROBLEM
    assert_problem(status, json.loads(body), 405)
    assert headers["Allow"] == "POST"


async def test_stopping_the_dispatcher_closes_the_http_port(
    dispatcher_settings: DispatcherSettings,
) -> None:
    running = await create_dispatcher(dispatcher_settings)
    port = running.http_port
    await running.stop(0)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{port}/openapi.json"),
        ):
            pass
