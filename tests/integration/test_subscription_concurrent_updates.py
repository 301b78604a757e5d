"""Updates without an etag ask for no check: concurrent ones must all apply, never fail."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from google.protobuf import field_mask_pb2

from tests.conftest import Tokens
from tests.integration.conftest import auth
from webhooks.v1 import subscription_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

UPDATES = 24


async def test_concurrent_updates_without_an_etag_all_apply(stub: Stub, tokens: Tokens) -> None:
    created = await stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                url="https://receiver.example.com/hook", message_types=["event.claim.*"]
            )
        ),
        metadata=auth(tokens.acme),
    )
    subscription_id = created.subscription.id

    async def update(n: int) -> pb.Subscription:
        answer = await stub.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(id=subscription_id, description=f"update {n}"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=auth(tokens.acme),
        )
        return answer.subscription

    # As a dispatcher does when several deliveries answer 410 at once.
    updated = await asyncio.gather(*(update(n) for n in range(UPDATES)))
    assert len({u.etag for u in updated}) == UPDATES  # each applied to its own version
    final = await stub.GetSubscription(
        pb.GetSubscriptionRequest(id=subscription_id), metadata=auth(tokens.acme)
    )
    assert final.subscription.description in {f"update {n}" for n in range(UPDATES)}
    assert final.subscription.etag not in {created.subscription.etag}
