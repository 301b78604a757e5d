"""The subscription service over real gRPC, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2

from subscription_service.server import create_server
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth, field_violations
from webhooks.v1 import subscription_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

CLAIM_CREATED = "event.claim.created.v1"
CLAIM_UPDATED = "event.claim.updated.v1"
NOTE_CREATED = "event.note.created.v1"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
Code = grpc.StatusCode
Watch = pb.WatchSubscriptionsResponse


async def create(
    stub: Stub,
    token: str,
    *,
    url: str = "https://receiver.example.com/hooks",
    message_types: Sequence[str] = (CLAIM_CREATED,),
    **fields: object,
) -> pb.Subscription:
    response = await stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(url=url, message_types=list(message_types), **fields)  # type: ignore[arg-type]
        ),
        metadata=auth(token),
    )
    return response.subscription


async def fails_with(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def list_all(stub: Stub, token: str, **filters: object) -> list[pb.Subscription]:
    found: list[pb.Subscription] = []
    token_ = ""
    while True:
        page = await stub.ListSubscriptions(
            pb.ListSubscriptionsRequest(page_token=token_, **filters),  # type: ignore[arg-type]
            metadata=auth(token),
        )
        found.extend(page.subscriptions)
        token_ = page.next_page_token
        if not token_:
            return found


async def test_created_subscription_is_returned_by_get_without_its_secret(
    stub: Stub, tokens: Tokens
) -> None:
    created = await create(
        stub,
        tokens.acme,
        message_types=[CLAIM_CREATED, "event.instalmentPlan.*"],
        description="claims to the ledger",
        secret=SECRET,
        signature_algorithm=pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
    )
    assert created.id.startswith("sub_")
    assert created.tenant == "acme"
    assert created.enabled is True
    assert created.has_secret is True
    assert created.secret == ""
    assert created.etag
    assert created.create_time == created.update_time
    assert created.create_time.seconds > 0

    fetched = (
        await stub.GetSubscription(
            pb.GetSubscriptionRequest(id=created.id), metadata=auth(tokens.acme)
        )
    ).subscription
    assert fetched == created
    assert list(fetched.message_types) == [CLAIM_CREATED, "event.instalmentPlan.*"]
    assert fetched.signature_algorithm == pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256


async def test_create_defaults_to_enabled_with_ecdsa_and_no_secret(
    stub: Stub, tokens: Tokens
) -> None:
    created = await create(stub, tokens.acme)
    assert created.enabled is True
    assert created.signature_algorithm == pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256
    assert created.has_secret is False
    disabled = await create(stub, tokens.acme, enabled=False)
    assert disabled.enabled is False


async def test_list_walks_every_page_in_creation_order(stub: Stub, tokens: Tokens) -> None:
    created = [await create(stub, tokens.acme, description=f"n{i}") for i in range(7)]
    pages: list[list[str]] = []
    page_token = ""
    while True:
        page = await stub.ListSubscriptions(
            pb.ListSubscriptionsRequest(page_size=3, page_token=page_token),
            metadata=auth(tokens.acme),
        )
        pages.append([s.id for s in page.subscriptions])
        page_token = page.next_page_token
        if not page_token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == [s.id for s in created]


async def test_list_filters_by_message_type_through_patterns_and_by_enabled(
    stub: Stub, tokens: Tokens
) -> None:
    exact = await create(stub, tokens.acme, message_types=[CLAIM_CREATED])
    pattern = await create(stub, tokens.acme, message_types=["event.claim.*"], enabled=False)
    other = await create(stub, tokens.acme, message_types=[NOTE_CREATED])

    receiving = await list_all(stub, tokens.acme, message_type=CLAIM_CREATED)
    assert [s.id for s in receiving] == [exact.id, pattern.id]
    assert [s.id for s in await list_all(stub, tokens.acme, message_type=CLAIM_UPDATED)] == [
        pattern.id
    ]
    listing_pattern = await list_all(stub, tokens.acme, message_type="event.claim.*")
    assert [s.id for s in listing_pattern] == [pattern.id]
    assert [s.id for s in await list_all(stub, tokens.acme, enabled=True)] == [exact.id, other.id]
    assert [s.id for s in await list_all(stub, tokens.acme, enabled=False)] == [pattern.id]
    both = await list_all(stub, tokens.acme, enabled=True, message_type=CLAIM_CREATED)
    assert [s.id for s in both] == [exact.id]


async def test_page_token_is_refused_with_other_filters_or_when_forged(
    stub: Stub, tokens: Tokens
) -> None:
    for _ in range(3):
        await create(stub, tokens.acme)
    first = await stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(page_size=1), metadata=auth(tokens.acme)
    )
    changed = await fails_with(
        stub.ListSubscriptions(
            pb.ListSubscriptionsRequest(
                page_size=1, page_token=first.next_page_token, enabled=True
            ),
            metadata=auth(tokens.acme),
        )
    )
    assert changed.code() == Code.INVALID_ARGUMENT
    assert "page_token" in field_violations(changed)
    forged = await fails_with(
        stub.ListSubscriptions(
            pb.ListSubscriptionsRequest(page_token="not-a-token!"), metadata=auth(tokens.acme)
        )
    )
    assert forged.code() == Code.INVALID_ARGUMENT
    assert "page_token" in field_violations(forged)
    too_big = await fails_with(
        stub.ListSubscriptions(
            pb.ListSubscriptionsRequest(page_size=5000), metadata=auth(tokens.acme)
        )
    )
    assert "page_size" in field_violations(too_big)


async def test_update_changes_only_the_fields_in_the_mask(stub: Stub, tokens: Tokens) -> None:
    created = await create(stub, tokens.acme, description="before", secret=SECRET)
    response = await stub.UpdateSubscription(
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(
                id=created.id,
                url="https://elsewhere.example.com/in",
                description="ignored: not in the mask",
                message_types=[NOTE_CREATED],
                etag=created.etag,
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["url", "message_types"]),
        ),
        metadata=auth(tokens.acme),
    )
    updated = response.subscription
    assert updated.url == "https://elsewhere.example.com/in"
    assert list(updated.message_types) == [NOTE_CREATED]
    assert updated.description == "before"
    assert updated.has_secret is True
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()


async def test_update_with_a_stale_etag_fails_and_changes_nothing(
    stub: Stub, tokens: Tokens
) -> None:
    created = await create(stub, tokens.acme, description="v1")
    mask = field_mask_pb2.FieldMask(paths=["description"])
    await stub.UpdateSubscription(
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(id=created.id, description="v2", etag=created.etag),
            update_mask=mask,
        ),
        metadata=auth(tokens.acme),
    )
    stale = await fails_with(
        stub.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(id=created.id, description="v3", etag=created.etag),
                update_mask=mask,
            ),
            metadata=auth(tokens.acme),
        )
    )
    assert stale.code() == Code.FAILED_PRECONDITION
    current = (
        await stub.GetSubscription(
            pb.GetSubscriptionRequest(id=created.id), metadata=auth(tokens.acme)
        )
    ).subscription
    assert current.description == "v2"


async def test_concurrent_updates_with_one_etag_let_exactly_one_win(
    stub: Stub, tokens: Tokens
) -> None:
    created = await create(stub, tokens.acme)
    attempts = [
        stub.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(id=created.id, description=f"d{i}", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=auth(tokens.acme),
        )
        for i in range(5)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    winners = [r for r in results if isinstance(r, pb.UpdateSubscriptionResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert {e.code() for e in losers} == {Code.FAILED_PRECONDITION}


async def test_update_mask_must_name_known_mutable_fields(stub: Stub, tokens: Tokens) -> None:
    created = await create(stub, tokens.acme)
    for paths in ([], ["tenant"], ["id"], ["create_time"], ["nonsense"]):
        error = await fails_with(
            stub.UpdateSubscription(
                pb.UpdateSubscriptionRequest(
                    subscription=pb.Subscription(id=created.id),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                ),
                metadata=auth(tokens.acme),
            )
        )
        assert error.code() == Code.INVALID_ARGUMENT, paths
        assert "update_mask" in field_violations(error)


async def test_disabling_records_a_reason_that_enabling_clears(stub: Stub, tokens: Tokens) -> None:
    created = await create(stub, tokens.acme)

    async def update(paths: list[str], **fields: object) -> pb.Subscription:
        response = await stub.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(id=created.id, **fields),  # type: ignore[arg-type]
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=auth(tokens.acme),
        )
        return response.subscription

    disabled = await update(
        ["enabled", "disabled_reason"], enabled=False, disabled_reason="410 Gone"
    )
    assert (disabled.enabled, disabled.disabled_reason) == (False, "410 Gone")
    enabled = await update(["enabled"], enabled=True)
    assert (enabled.enabled, enabled.disabled_reason) == (True, "")
    error = await fails_with(update(["disabled_reason"], disabled_reason="why"))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "subscription.disabled_reason" in field_violations(error)


async def test_secret_can_be_replaced_and_removed(stub: Stub, tokens: Tokens) -> None:
    created = await create(stub, tokens.acme, secret=SECRET)
    response = await stub.UpdateSubscription(
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(id=created.id, secret=""),
            update_mask=field_mask_pb2.FieldMask(paths=["secret"]),
        ),
        metadata=auth(tokens.acme),
    )
    assert response.subscription.has_secret is False


async def test_delete_removes_and_honours_the_etag(stub: Stub, tokens: Tokens) -> None:
    created = await create(stub, tokens.acme)
    stale = await fails_with(
        stub.DeleteSubscription(
            pb.DeleteSubscriptionRequest(id=created.id, etag='"999"'), metadata=auth(tokens.acme)
        )
    )
    assert stale.code() == Code.FAILED_PRECONDITION
    await stub.DeleteSubscription(
        pb.DeleteSubscriptionRequest(id=created.id, etag=created.etag), metadata=auth(tokens.acme)
    )
    gone = await fails_with(
        stub.GetSubscription(pb.GetSubscriptionRequest(id=created.id), metadata=auth(tokens.acme))
    )
    assert gone.code() == Code.NOT_FOUND
    again = await fails_with(
        stub.DeleteSubscription(
            pb.DeleteSubscriptionRequest(id=created.id), metadata=auth(tokens.acme)
        )
    )
    assert again.code() == Code.NOT_FOUND


async def next_item(stream: grpc.aio.UnaryStreamCall[pb.WatchSubscriptionsRequest, Watch]) -> Watch:
    item = await asyncio.wait_for(stream.read(), timeout=10)
    assert isinstance(item, Watch), "the watch stream ended"
    return item


async def test_watch_sends_snapshot_then_changes_in_order_for_own_tenant_only(
    stub: Stub, tokens: Tokens
) -> None:
    first = await create(stub, tokens.acme, description="first")
    await create(stub, tokens.globex, description="globex, never seen by acme")
    second = await create(stub, tokens.acme, description="second")

    stream = stub.WatchSubscriptions(pb.WatchSubscriptionsRequest(), metadata=auth(tokens.acme))
    snapshot = [await next_item(stream), await next_item(stream)]
    assert [(m.change_type, m.subscription.id) for m in snapshot] == [
        (Watch.CHANGE_TYPE_SNAPSHOT, first.id),
        (Watch.CHANGE_TYPE_SNAPSHOT, second.id),
    ]
    assert (await next_item(stream)).change_type == Watch.CHANGE_TYPE_SNAPSHOT_COMPLETE

    await create(stub, tokens.globex, description="globex again")
    third = await create(stub, tokens.acme, description="third")
    updated = (
        await stub.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(id=first.id, description="first, renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=auth(tokens.acme),
        )
    ).subscription
    await stub.DeleteSubscription(
        pb.DeleteSubscriptionRequest(id=second.id), metadata=auth(tokens.acme)
    )

    changes = [await next_item(stream) for _ in range(3)]
    assert [(m.change_type, m.subscription.id) for m in changes] == [
        (Watch.CHANGE_TYPE_CREATED, third.id),
        (Watch.CHANGE_TYPE_UPDATED, first.id),
        (Watch.CHANGE_TYPE_DELETED, second.id),
    ]
    assert changes[1].subscription == updated
    assert all(m.subscription.tenant == "acme" for m in changes)
    stream.cancel()


async def test_watch_carries_secrets_only_for_the_platform_admin(
    stub: Stub, tokens: Tokens
) -> None:
    await create(stub, tokens.acme, secret=SECRET)
    for token, expected in ((tokens.platform, SECRET), (tokens.operator, ""), (tokens.acme, "")):
        stream = stub.WatchSubscriptions(pb.WatchSubscriptionsRequest(), metadata=auth(token))
        item = await next_item(stream)
        assert item.subscription.secret == expected
        assert item.subscription.has_secret is True
        stream.cancel()


async def test_every_rpc_refuses_missing_and_unknown_tokens(stub: Stub) -> None:
    calls = [
        (stub.CreateSubscription, pb.CreateSubscriptionRequest()),
        (stub.GetSubscription, pb.GetSubscriptionRequest(id="sub_x")),
        (stub.ListSubscriptions, pb.ListSubscriptionsRequest()),
        (stub.UpdateSubscription, pb.UpdateSubscriptionRequest()),
        (stub.DeleteSubscription, pb.DeleteSubscriptionRequest(id="sub_x")),
    ]
    for metadata in ((), auth("nobody-issued-this"), (("authorization", "Basic abc"),)):
        for method, request in calls:
            error = await fails_with(method(request, metadata=metadata))  # type: ignore[operator]
            assert error.code() == Code.UNAUTHENTICATED, (method, metadata)
        stream = stub.WatchSubscriptions(pb.WatchSubscriptionsRequest(), metadata=metadata)
        error = await fails_with(stream.read())
        assert error.code() == Code.UNAUTHENTICATED


async def test_tokens_without_the_scope_are_denied(stub: Stub, tokens: Tokens) -> None:
    created = await create(stub, tokens.acme)
    denied = await fails_with(create(stub, tokens.acme_reader))
    assert denied.code() == Code.PERMISSION_DENIED
    for call in (
        stub.DeleteSubscription(
            pb.DeleteSubscriptionRequest(id=created.id), metadata=auth(tokens.acme_reader)
        ),
        stub.GetSubscription(
            pb.GetSubscriptionRequest(id=created.id), metadata=auth(tokens.acme_publisher)
        ),
        stub.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=auth(tokens.acme_publisher)),
    ):
        assert (await fails_with(call)).code() == Code.PERMISSION_DENIED
    # The reader can still read.
    await stub.GetSubscription(
        pb.GetSubscriptionRequest(id=created.id), metadata=auth(tokens.acme_reader)
    )


async def test_another_tenants_subscription_is_not_found_and_never_listed(
    stub: Stub, tokens: Tokens
) -> None:
    theirs = await create(stub, tokens.globex)
    mine = await create(stub, tokens.acme)
    for call in (
        stub.GetSubscription(pb.GetSubscriptionRequest(id=theirs.id), metadata=auth(tokens.acme)),
        stub.DeleteSubscription(
            pb.DeleteSubscriptionRequest(id=theirs.id), metadata=auth(tokens.acme)
        ),
        stub.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(id=theirs.id, description="hijack"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=auth(tokens.acme),
        ),
    ):
        error = await fails_with(call)
        assert error.code() == Code.NOT_FOUND
        assert "globex" not in (error.details() or "")
    assert [s.id for s in await list_all(stub, tokens.acme)] == [mine.id]
    naming_them = await fails_with(
        stub.ListSubscriptions(
            pb.ListSubscriptionsRequest(tenant="globex"), metadata=auth(tokens.acme)
        )
    )
    assert naming_them.code() == Code.PERMISSION_DENIED
    intact = (
        await stub.GetSubscription(
            pb.GetSubscriptionRequest(id=theirs.id), metadata=auth(tokens.globex)
        )
    ).subscription
    assert intact == theirs


async def test_tokens_for_every_tenant_must_name_the_tenant_and_see_all(
    stub: Stub, tokens: Tokens
) -> None:
    missing = await fails_with(create(stub, tokens.operator))
    assert missing.code() == Code.INVALID_ARGUMENT
    assert "subscription.tenant" in field_violations(missing)
    bad_tenant = await fails_with(create(stub, tokens.operator, tenant="no spaces allowed"))
    assert "subscription.tenant" in field_violations(bad_tenant)
    for_acme = await create(stub, tokens.operator, tenant="acme")
    assert for_acme.tenant == "acme"
    for_globex = await create(stub, tokens.globex)
    assert {s.id for s in await list_all(stub, tokens.operator)} == {for_acme.id, for_globex.id}
    assert [s.id for s in await list_all(stub, tokens.operator, tenant="globex")] == [for_globex.id]
    wrong_tenant = await fails_with(create(stub, tokens.acme, tenant="globex"))
    assert wrong_tenant.code() == Code.PERMISSION_DENIED


BAD_URLS = {
    "": "required",
    "/relative/path": "absolute",
    "ftp://files.example.com/x": "absolute",
    "https://user:pass@example.com/x": "credentials",
    "https:///no-host": "host",
    "https://example.com/x#frag": "fragment",
    "https://example.com:99999/x": "port",
    "https://exa mple.com/x": "spaces",
    "https://example.com/" + "a" * 2048: "2048",
}


@pytest.mark.parametrize(("url", "why"), BAD_URLS.items(), ids=list(range(len(BAD_URLS))))
async def test_bad_urls_are_refused_naming_the_field(
    stub: Stub, tokens: Tokens, url: str, why: str
) -> None:
    error = await fails_with(create(stub, tokens.acme, url=url))
    assert error.code() == Code.INVALID_ARGUMENT
    assert why in field_violations(error)["subscription.url"]


BAD_MESSAGE_TYPES: dict[str, tuple[list[str], str]] = {
    "empty": ([], "subscription.message_types"),
    "unknown": ([CLAIM_CREATED, "event.claim.exploded.v1"], "subscription.message_types[1]"),
    "not a name": (["claim created"], "subscription.message_types[0]"),
    "pattern matching nothing": (["event.nothingHere.*"], "subscription.message_types[0]"),
    "bare star": (["*"], "subscription.message_types[0]"),
    "inner star": (["event.*.created.v1"], "subscription.message_types[0]"),
    "duplicate": ([CLAIM_CREATED, CLAIM_CREATED], "subscription.message_types[1]"),
    "too many": ([f"event.claim.{i}.*" for i in range(101)], "subscription.message_types"),
    "too long": (["event." + "a" * 300 + ".v1"], "subscription.message_types[0]"),
}


@pytest.mark.parametrize(
    ("types", "field"), BAD_MESSAGE_TYPES.values(), ids=BAD_MESSAGE_TYPES.keys()
)
async def test_bad_message_types_are_refused_naming_the_entry(
    stub: Stub, tokens: Tokens, types: list[str], field: str
) -> None:
    error = await fails_with(create(stub, tokens.acme, message_types=types))
    assert error.code() == Code.INVALID_ARGUMENT
    assert field in field_violations(error)


async def test_every_bad_field_is_named_in_one_answer(stub: Stub, tokens: Tokens) -> None:
    error = await fails_with(
        create(stub, tokens.acme, url="nope", description="x" * 1025, secret="whsec_tooshort")
    )
    assert error.code() == Code.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "subscription.url",
        "subscription.description",
        "subscription.secret",
    }


async def test_an_unknown_signature_algorithm_is_refused(stub: Stub, tokens: Tokens) -> None:
    error = await fails_with(create(stub, tokens.acme, signature_algorithm=77))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "subscription.signature_algorithm" in field_violations(error)


async def test_bad_ids_and_etags_are_invalid_arguments(stub: Stub, tokens: Tokens) -> None:
    empty = await fails_with(
        stub.GetSubscription(pb.GetSubscriptionRequest(), metadata=auth(tokens.acme))
    )
    assert empty.code() == Code.INVALID_ARGUMENT
    assert "id" in field_violations(empty)
    huge = await fails_with(
        stub.GetSubscription(pb.GetSubscriptionRequest(id="x" * 500), metadata=auth(tokens.acme))
    )
    assert "id" in field_violations(huge)
    created = await create(stub, tokens.acme)
    etag = await fails_with(
        stub.DeleteSubscription(
            pb.DeleteSubscriptionRequest(id=created.id, etag="W/garbage"),
            metadata=auth(tokens.acme),
        )
    )
    assert etag.code() == Code.INVALID_ARGUMENT
    assert "etag" in field_violations(etag)


async def test_subscriptions_survive_a_restart(
    subscription_settings: SubscriptionSettings, tokens: Tokens
) -> None:
    running = await create_server(subscription_settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        created = await create(Stub(channel), tokens.acme, secret=SECRET)
    await running.stop(1)

    restarted = await create_server(subscription_settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            fetched = await Stub(channel).GetSubscription(
                pb.GetSubscriptionRequest(id=created.id), metadata=auth(tokens.acme)
            )
        assert fetched.subscription == created
    finally:
        await restarted.stop(0)
