"""The gRPC face of the subscription service: protobuf in, manager calls, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from service_common.auth import Caller, Scope, TokenStore
from service_common.conversions import timestamp_of
from service_common.errors import InvalidArgument
from service_common.grpc_errors import translate_errors, translate_stream_errors
from subscription_service.domain import (
    ChangeType,
    SignatureAlgorithm,
    Subscription,
    SubscriptionPatch,
)
from subscription_service.manager import (
    MUTABLE_FIELDS,
    Resumed,
    SnapshotComplete,
    SubscriptionFields,
    SubscriptionManager,
)
from webhooks.v1 import subscription_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2_grpc as pb_grpc

__all__ = ["SubscriptionServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

_ALGORITHMS_TO_PB = {
    SignatureAlgorithm.ECDSA_P256_SHA256: pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256,
    SignatureAlgorithm.RSA_PKCS1_SHA256: pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
}
_ALGORITHMS_FROM_PB = {value: key for key, value in _ALGORITHMS_TO_PB.items()}
_CHANGES_TO_PB = {
    None: pb.WatchSubscriptionsResponse.CHANGE_TYPE_SNAPSHOT,
    ChangeType.CREATED: pb.WatchSubscriptionsResponse.CHANGE_TYPE_CREATED,
    ChangeType.UPDATED: pb.WatchSubscriptionsResponse.CHANGE_TYPE_UPDATED,
    ChangeType.DELETED: pb.WatchSubscriptionsResponse.CHANGE_TYPE_DELETED,
}
_MARKERS_TO_PB = {
    SnapshotComplete: pb.WatchSubscriptionsResponse.CHANGE_TYPE_SNAPSHOT_COMPLETE,
    Resumed: pb.WatchSubscriptionsResponse.CHANGE_TYPE_RESUMED,
}


class SubscriptionServicer(pb_grpc.SubscriptionServiceServicer):
    def __init__(self, *, manager: SubscriptionManager, tokens: TokenStore) -> None:
        self._manager = manager
        self._tokens = tokens

    def _caller(self, context: Context) -> Caller:
        return self._tokens.authenticate(context.invocation_metadata())

    @translate_errors
    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: Context
    ) -> pb.CreateSubscriptionResponse:
        caller = self._caller(context)
        given = request.subscription
        fields = SubscriptionFields(
            tenant=given.tenant,
            url=given.url,
            message_types=tuple(given.message_types),
            enabled=given.enabled if given.HasField("enabled") else True,
            description=given.description,
            signature_algorithm=_algorithm_from_pb(given.signature_algorithm),
            secret=given.secret,
        )
        created = await self._manager.create(caller, fields)
        return pb.CreateSubscriptionResponse(subscription=_to_pb(created))

    @translate_errors
    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: Context
    ) -> pb.GetSubscriptionResponse:
        found = await self._manager.get(self._caller(context), request.id)
        return pb.GetSubscriptionResponse(subscription=_to_pb(found))

    @translate_errors
    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Context
    ) -> pb.ListSubscriptionsResponse:
        page = await self._manager.list(
            self._caller(context),
            page_size=request.page_size,
            page_token=request.page_token,
            message_type=request.message_type,
            enabled=request.enabled if request.HasField("enabled") else None,
            tenant=request.tenant,
        )
        return pb.ListSubscriptionsResponse(
            subscriptions=[_to_pb(subscription) for subscription in page.subscriptions],
            next_page_token=page.next_page_token,
        )

    @translate_errors
    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, context: Context
    ) -> pb.UpdateSubscriptionResponse:
        caller = self._caller(context)
        updated = await self._manager.update(
            caller,
            request.subscription.id,
            patch=_patch_from_pb(request),
            etag=request.subscription.etag,
        )
        return pb.UpdateSubscriptionResponse(subscription=_to_pb(updated))

    @translate_errors
    async def DeleteSubscription(
        self, request: pb.DeleteSubscriptionRequest, context: Context
    ) -> pb.DeleteSubscriptionResponse:
        await self._manager.delete(self._caller(context), request.id, etag=request.etag)
        return pb.DeleteSubscriptionResponse()

    @translate_stream_errors
    async def WatchSubscriptions(
        self, request: pb.WatchSubscriptionsRequest, context: Context
    ) -> AsyncIterator[pb.WatchSubscriptionsResponse]:
        caller = self._caller(context)
        # Only the platform's own identity (admin of every tenant) needs secrets: to sign.
        with_secret = caller.all_tenants and Scope.ADMIN in caller.scopes
        items = self._manager.watch(
            caller, tenant=request.tenant, resume_after=request.resume_after
        )
        async for item in items:
            if isinstance(item, SnapshotComplete | Resumed):
                yield pb.WatchSubscriptionsResponse(
                    change_type=_MARKERS_TO_PB[type(item)], position=item.position
                )
                continue
            yield pb.WatchSubscriptionsResponse(
                change_type=_CHANGES_TO_PB[item.change],
                subscription=_to_pb(item.subscription, with_secret=with_secret),
                position=item.position,
            )


def _algorithm_from_pb(value: int) -> SignatureAlgorithm | None:
    if value == pb.SIGNATURE_ALGORITHM_UNSPECIFIED:
        return None
    try:
        return _ALGORITHMS_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument.of(
            "subscription.signature_algorithm", f"unknown algorithm {value}"
        ) from None


def _patch_from_pb(request: pb.UpdateSubscriptionRequest) -> SubscriptionPatch:
    paths = list(request.update_mask.paths)
    unknown = sorted(set(paths) - MUTABLE_FIELDS)
    if unknown:
        raise InvalidArgument.of(
            "update_mask",
            f"cannot change {', '.join(unknown)}; the fields that can change are "
            + ", ".join(sorted(MUTABLE_FIELDS)),
        )
    given = request.subscription
    return SubscriptionPatch(
        url=given.url if "url" in paths else None,
        message_types=tuple(given.message_types) if "message_types" in paths else None,
        # An `enabled` left unset in the message but named in the mask means false.
        enabled=given.enabled if "enabled" in paths else None,
        description=given.description if "description" in paths else None,
        signature_algorithm=(
            _algorithm_from_pb(given.signature_algorithm) or SignatureAlgorithm.ECDSA_P256_SHA256
            if "signature_algorithm" in paths
            else None
        ),
        secret=given.secret if "secret" in paths else None,
        disabled_reason=given.disabled_reason if "disabled_reason" in paths else None,
    )


def _to_pb(subscription: Subscription, *, with_secret: bool = False) -> pb.Subscription:
    return pb.Subscription(
        id=subscription.id,
        tenant=subscription.tenant,
        url=subscription.url,
        message_types=list(subscription.message_types),
        enabled=subscription.enabled,
        description=subscription.description,
        signature_algorithm=_ALGORITHMS_TO_PB[subscription.signature_algorithm],
        secret=(subscription.secret or "") if with_secret else "",
        has_secret=subscription.secret is not None,
        disabled_reason=subscription.disabled_reason,
        etag=subscription.etag,
        create_time=timestamp_of(subscription.create_time),
        update_time=timestamp_of(subscription.update_time),
    )
