"""The dispatcher end to end: both services on loopback, a real receiver, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from standardwebhooks.webhooks import Webhook

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth, field_violations, publish, routed
from tests.receiver import Receiver
from webhook_receiver import verify_webhook
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

CLAIM_CREATED = "event.claim.created.v1"
NOTE_CREATED = "event.note.created.v1"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
Result = pb.PublishResult


def claim_details() -> dict[str, Any]:
    """Every documented field of event.claim.created.v1."""
    return {
        "messageType": CLAIM_CREATED,
        "claimRef": "CLAIM-1",
        "receeveClaimRef": "RCV-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }


def claim_event(message_id: str, **details: Any) -> pb.Event:
    return pb.Event(
        message_id=message_id,
        message_type=CLAIM_CREATED,
        details=json.dumps({**claim_details(), **details}),
        user=pb.EventUser(id="USER_ID", pool_id="POOL_ID", originator="ClientAPI"),
    )


async def subscribe(
    stub: Stub,
    token: str,
    url: str,
    *types: str,
    **fields: Any,
) -> sub_pb.Subscription:
    response = await stub.CreateSubscription(
        sub_pb.CreateSubscriptionRequest(
            subscription=sub_pb.Subscription(url=url, message_types=list(types), **fields)
        ),
        metadata=auth(token),
    )
    return response.subscription


async def public_key_pem(dispatcher_stub: DispatcherStub, token: str, key_id: str) -> str:
    keys = await dispatcher_stub.ListSigningKeys(pb.ListSigningKeysRequest(), metadata=auth(token))
    (key,) = [k for k in keys.keys if k.key_id == key_id]
    return key.public_key_pem


async def test_one_event_reaches_every_matching_subscription_signed_and_valid(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/exact"), CLAIM_CREATED)
    await subscribe(stub, tokens.acme, receiver.url("/pattern"), "event.claim.*")
    await subscribe(
        stub,
        tokens.acme,
        receiver.url("/rsa"),
        CLAIM_CREATED,
        signature_algorithm=sub_pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
    )
    await subscribe(stub, tokens.acme, receiver.url("/other-type"), NOTE_CREATED)
    await subscribe(stub, tokens.globex, receiver.url("/other-tenant"), CLAIM_CREATED)
    await subscribe(stub, tokens.acme, receiver.url("/disabled"), CLAIM_CREATED, enabled=False)
    await routed(dispatcher, "acme", CLAIM_CREATED, 3)

    [[result]] = await publish(
        dispatcher_stub, tokens.acme_publisher, [claim_event("m-1", amount=501)]
    )
    assert (result.message_id, result.outcome, result.deliveries) == (
        "m-1",
        Result.OUTCOME_ACCEPTED,
        3,
    )

    arrived = await receiver.wait_for(3)
    assert sorted(r.path for r in arrived) == ["/exact", "/pattern", "/rsa"]
    for request in arrived:
        pem = await public_key_pem(dispatcher_stub, tokens.acme, request.headers["webhook-key-id"])
        webhook = verify_webhook(request.body, pem)  # signature, payloadAsString, contract
        assert webhook.message_id == "m-1"
        assert webhook.details["amount"] == 501
        assert isinstance(webhook.details["amount"], int)
        assert webhook.user == {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"}
        # The payload object in the body is byte for byte the signed text.
        assert b'"payload":' + webhook.payload_as_string.encode() + b"," in request.body
        assert request.headers["webhook-id"] == "m-1"
        assert request.headers["Content-Type"] == "application/json"
    algorithms = {r.path: r.headers["webhook-signature-algorithm"] for r in arrived}
    assert algorithms == {"/exact": "ES256", "/pattern": "ES256", "/rsa": "RS256"}
    await asyncio.sleep(0.3)
    assert {r.path for r in receiver.requests} == {"/exact", "/pattern", "/rsa"}


async def test_a_subscription_secret_adds_a_standard_webhooks_signature(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/hmac"), CLAIM_CREATED, secret=SECRET)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("m-hmac")])
    (request,) = await receiver.wait_for(1)
    verified = Webhook(SECRET).verify(request.body, dict(request.headers))
    assert verified["payload"]["messageId"] == "m-hmac"


async def test_a_duplicate_message_id_is_acknowledged_but_delivered_once(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/once"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    results = await publish(
        dispatcher_stub,
        tokens.acme_publisher,
        [claim_event("dup"), claim_event("dup")],
        [claim_event("dup")],
    )
    outcomes = [r.outcome for batch in results for r in batch]
    assert outcomes == [Result.OUTCOME_ACCEPTED, Result.OUTCOME_DUPLICATE, Result.OUTCOME_DUPLICATE]
    await receiver.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1


async def test_invalid_events_are_refused_per_event_naming_the_field_and_nothing_is_stored(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/in"), "event.*")
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    bad = [
        claim_event("bad-amount", amount="five hundred"),
        pb.Event(message_id="bad-type", message_type="event.claim.exploded.v1", details="{}"),
        pb.Event(message_id="bad-json", message_type=CLAIM_CREATED, details="{not json"),
        pb.Event(message_id="", message_type=CLAIM_CREATED, details="{}"),
        pb.Event(
            message_id="big", message_type=NOTE_CREATED, details=json.dumps({"x": "y" * 70000})
        ),
        claim_event("wrong-tenant").__class__(
            tenant="globex", message_id="wrong-tenant", message_type=NOTE_CREATED, details="{}"
        ),
        claim_event("good"),
    ]
    [results] = await publish(dispatcher_stub, tokens.acme_publisher, bad)
    by_id = {r.message_id: r for r in results}
    fields = {
        r.message_id: [v.field for v in r.error.field_violations]
        for r in results
        if r.outcome == Result.OUTCOME_REJECTED
    }
    assert fields["bad-amount"] == ["details.amount"]
    assert fields["bad-type"] == ["message_type"]
    assert fields["bad-json"] == ["details"]
    assert fields[""] == ["message_id"]
    assert fields["big"] == ["details"]
    assert by_id["wrong-tenant"].error.code == "PERMISSION_DENIED"
    assert {r.error.code for r in results if r.outcome == Result.OUTCOME_REJECTED} <= {
        "INVALID_ARGUMENT",
        "PERMISSION_DENIED",
    }
    assert by_id["good"].outcome == Result.OUTCOME_ACCEPTED

    (delivered,) = await receiver.wait_for(1)
    assert json.loads(delivered.body)["payload"]["messageId"] == "good"
    listed = await dispatcher_stub.ListDeliveries(
        pb.ListDeliveriesRequest(), metadata=auth(tokens.acme_deliveries)
    )
    assert [d.message_id for d in listed.deliveries] == ["good"]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dispatcher_stub.PublishEvent(
            pb.PublishEventRequest(event=claim_event("unary-bad", amount=-1.5)),
            metadata=auth(tokens.acme_publisher),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "details.amount" in field_violations(refused.value)


async def test_failed_attempts_are_retried_on_the_schedule_and_each_is_recorded(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    receiver.script("/flaky", 500, "hang", (429, {"Retry-After": "1"}), 200)
    await subscribe(stub, tokens.acme, receiver.url("/flaky"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("retry-me")])
    attempts = await receiver.wait_for(4, within=30)
    # Retry-After: 1 lengthens the 0.2 s schedule delay to a second.
    assert attempts[3].at - attempts[2].at >= 0.95
    # ECDSA signatures differ each time; the signed text never does.
    signed = {json.loads(a.body)["payloadAsString"] for a in attempts}
    assert len(signed) == 1

    async def delivery() -> pb.Delivery:
        listed = await dispatcher_stub.ListDeliveries(
            pb.ListDeliveriesRequest(message_id="retry-me"), metadata=auth(tokens.acme_deliveries)
        )
        (found,) = listed.deliveries
        got = await dispatcher_stub.GetDelivery(
            pb.GetDeliveryRequest(id=found.id), metadata=auth(tokens.acme_deliveries)
        )
        return got.delivery

    deadline = time.monotonic() + 10
    while (current := await delivery()).state != pb.DELIVERY_STATE_SUCCEEDED:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert [a.status_code for a in current.attempts] == [500, 0, 429, 200]
    assert "timed out" in current.attempts[1].error.lower() or current.attempts[1].error
    assert current.attempts[0].response_snippet == "scripted failure"
    assert all(a.latency_ms >= 0 for a in current.attempts)


async def test_a_delivery_dies_after_the_last_attempt_and_can_be_redelivered(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    receiver.script("/down", 503, 503, 503, 503, 200)
    subscription = await subscribe(stub, tokens.acme, receiver.url("/down"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("dies")])
    await receiver.wait_for(4)
    listing = pb.ListDeliveriesRequest(message_id="dies", state=pb.DELIVERY_STATE_DEAD)
    deadline = time.monotonic() + 10
    while not (
        await dispatcher_stub.ListDeliveries(listing, metadata=auth(tokens.acme_deliveries))
    ).deliveries:
        assert time.monotonic() < deadline, "the delivery never died"
        await asyncio.sleep(0.05)

    since = sub_pb.Subscription().create_time.__class__()
    since.FromSeconds(0)
    replayed = await dispatcher_stub.RedeliverEvent(
        pb.RedeliverEventRequest(subscription_id=subscription.id, since=since),
        metadata=auth(tokens.acme_deliveries),
    )
    assert len(replayed.delivery_ids) == 1
    fifth = (await receiver.wait_for(5))[4]
    assert json.loads(fifth.body)["payload"]["messageId"] == "dies"


async def test_410_gone_disables_the_subscription_with_the_reason(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    receiver.script("/gone", 410)
    subscription = await subscribe(stub, tokens.acme, receiver.url("/gone"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("gone")])
    await receiver.wait_for(1)
    await routed(dispatcher, "acme", CLAIM_CREATED, 0)
    current = await stub.GetSubscription(
        sub_pb.GetSubscriptionRequest(id=subscription.id), metadata=auth(tokens.acme)
    )
    assert current.subscription.enabled is False
    assert "410" in current.subscription.disabled_reason
    # Re-enabling is an update; then deliveries flow again.
    await stub.UpdateSubscription(
        sub_pb.UpdateSubscriptionRequest(
            subscription=sub_pb.Subscription(id=subscription.id, enabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ),
        metadata=auth(tokens.acme),
    )
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)


async def test_publishing_needs_the_publish_scope_and_a_token(
    dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
        await publish(dispatcher_stub, "nobody", [claim_event("x")])
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [[result]] = await publish(dispatcher_stub, tokens.acme_deliveries, [claim_event("x")])
    assert result.outcome == Result.OUTCOME_REJECTED
    assert result.error.code == "PERMISSION_DENIED"
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await dispatcher_stub.ListDeliveries(
            pb.ListDeliveriesRequest(), metadata=auth(tokens.acme_publisher)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_stream_is_answered_batch_by_batch_in_the_order_of_its_requests(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/ordered"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    batches = [
        [claim_event(f"s-{b}-{i}", amount=i if (b + i) % 7 else "x") for i in range(20)]
        for b in range(12)
    ]
    results = await publish(dispatcher_stub, tokens.acme_publisher, *batches)
    assert [[r.message_id for r in answer] for answer in results] == [
        [e.message_id for e in batch] for batch in batches
    ]
    refused = {
        r.message_id for answer in results for r in answer if r.outcome == Result.OUTCOME_REJECTED
    }
    assert refused == {f"s-{b}-{i}" for b in range(12) for i in range(20) if (b + i) % 7 == 0}
    await receiver.wait_for(240 - len(refused))


async def test_an_ingest_only_replica_stores_deliveries_for_a_delivering_one(
    stub: Stub,
    dispatcher_settings: DispatcherSettings,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/later"), CLAIM_CREATED)
    ingesting = await create_dispatcher(dispatcher_settings.model_copy(update={"deliver": False}))
    try:
        await routed(ingesting, "acme", CLAIM_CREATED, 1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingesting.port}") as channel:
            results = await publish(
                DispatcherStub(channel), tokens.acme_publisher, [claim_event("later-1")]
            )
        assert results[0][0].outcome == Result.OUTCOME_ACCEPTED
        await asyncio.sleep(0.5)
        assert receiver.requests == []
    finally:
        await ingesting.stop(0)
    delivering = await create_dispatcher(dispatcher_settings)
    try:
        [request] = await receiver.wait_for(1)
        assert request.headers["webhook-id"] == "later-1"
    finally:
        await delivering.stop(0)


async def test_rotating_keys_signs_new_deliveries_with_the_new_key_and_keeps_the_old_published(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_settings: DispatcherSettings,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/rotated"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("before")])
    [before] = await receiver.wait_for(1)
    old_key = before.headers["webhook-key-id"]

    rotation = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher_service.rotate_keys",
        "--algorithm",
        "ES256",
        env={
            **os.environ,
            "DISPATCHER_SIGNING_KEYS_DIR": str(dispatcher_settings.signing_keys_dir),
        },
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await rotation.communicate()
    assert rotation.returncode == 0
    new_key = output.decode().split()[-1]
    assert new_key != old_key

    # Running dispatchers read the key directory again within seconds.
    deadline = time.monotonic() + 15
    while True:
        keys = await dispatcher_stub.ListSigningKeys(
            pb.ListSigningKeysRequest(), metadata=auth(tokens.acme)
        )
        active = {k.key_id: k.active for k in keys.keys}
        if active.get(new_key):
            break
        assert time.monotonic() < deadline, f"the new key was not published: {active}"
        await asyncio.sleep(0.2)
    assert active[old_key] is False

    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("after")])
    arrived = await receiver.wait_for(2)
    after = next(r for r in arrived if r.headers["webhook-id"] == "after")
    assert after.headers["webhook-key-id"] == new_key
    for request, key_id in ((before, old_key), (after, new_key)):
        pem = await public_key_pem(dispatcher_stub, tokens.acme, key_id)
        verify_webhook(request.body, pem)
