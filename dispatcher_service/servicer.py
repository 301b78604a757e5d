"""The gRPC face of the dispatcher: protobuf in, ingestion and delivery-log calls, protobuf out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from dispatcher_service.activity import ActivitySecond
from dispatcher_service.activity_reader import ActivityReader, DeliveryActivity
from dispatcher_service.deliveries import DeliveryLog
from dispatcher_service.domain import Attempt, Delivery, DeliveryState, IngestOutcome
from dispatcher_service.ingest import EventUser, IncomingEvent, Ingestor, Rejected
from dispatcher_service.signing import SignatureAlgorithm
from service_common.auth import Caller, TokenStore
from service_common.conversions import timestamp_of
from service_common.errors import InvalidArgument, WebhooksError
from service_common.grpc_errors import abort_with, status_code_of, translate_errors
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import dispatcher_service_pb2_grpc as pb_grpc
from webhooks.v1 import subscription_service_pb2 as subscription_pb

__all__ = ["DispatcherServicer", "PublicKeySource"]

Context = grpc.aio.ServicerContext[Any, Any]
Result = pb.PublishResult
# Batches of one PublishEvents stream in progress at once: one stream holds at most
# STREAM_WINDOW x MAX_BATCH_EVENTS events in memory; grpc flow control holds back the rest.
STREAM_WINDOW = 4

_STATES_TO_PB = {
    DeliveryState.PENDING: pb.DELIVERY_STATE_PENDING,
    DeliveryState.RETRYING: pb.DELIVERY_STATE_RETRYING,
    DeliveryState.SUCCEEDED: pb.DELIVERY_STATE_SUCCEEDED,
    DeliveryState.DEAD: pb.DELIVERY_STATE_DEAD,
}
_STATES_FROM_PB: dict[int, DeliveryState] = {int(v): k for k, v in _STATES_TO_PB.items()}
_ALGORITHMS_TO_PB = {
    SignatureAlgorithm.ECDSA_P256_SHA256: subscription_pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256,
    SignatureAlgorithm.RSA_PKCS1_SHA256: subscription_pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
}


class _PublicKey(Protocol):
    @property
    def key_id(self) -> str: ...
    @property
    def algorithm(self) -> SignatureAlgorithm: ...
    @property
    def public_key_pem(self) -> str: ...
    @property
    def create_time(self) -> datetime: ...
    @property
    def active(self) -> bool: ...


class PublicKeySource(Protocol):
    def public_keys(self) -> Sequence[_PublicKey]: ...


class DispatcherServicer(pb_grpc.DispatcherServiceServicer):
    def __init__(
        self,
        *,
        ingestor: Ingestor,
        log: DeliveryLog,
        keys: PublicKeySource,
        tokens: TokenStore,
        activity: ActivityReader,
    ) -> None:
        self._ingestor = ingestor
        self._log = log
        self._keys = keys
        self._tokens = tokens
        self._activity = activity

    def _caller(self, context: Context) -> Caller:
        return self._tokens.authenticate(context.invocation_metadata())

    async def PublishEvents(
        self, request_iterator: AsyncIterator[pb.PublishEventsRequest], context: Context
    ) -> AsyncIterator[pb.PublishEventsResponse]:
        try:
            caller = self._caller(context)
        except WebhooksError as error:
            await abort_with(context, error)
        # A few batches of one stream are checked and stored at once (the next one is
        # validated while the last is written); answers keep the order of the requests.
        window: asyncio.Queue[asyncio.Future[list[Result]] | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    batch = self._publish_batch(caller, request.events)
                    await window.put(asyncio.ensure_future(batch))
            finally:
                await window.put(None)

        reader = asyncio.create_task(read())
        try:
            while (pending := await window.get()) is not None:
                yield pb.PublishEventsResponse(results=await pending)
            await reader
        finally:
            reader.cancel()
            while not window.empty():
                if (left := window.get_nowait()) is not None:
                    left.cancel()

    async def _publish_batch(
        self, caller: Caller, events: Sequence[pb.Event]
    ) -> list[pb.PublishResult]:
        converted = [_incoming_or_rejected(event) for event in events]
        incoming = [item for item in converted if isinstance(item, IncomingEvent)]
        try:
            outcomes = iter(await self._ingestor.publish(caller, incoming))
        except WebhooksError as error:
            # Whatever concerns the whole batch (scope, size, store down) is answered per
            # event too, so the stream goes on and the publisher can retry those events.
            return [_rejected(Rejected(event.message_id, error)) for event in events]
        return [
            _rejected(item) if isinstance(item, Rejected) else _result(next(outcomes))
            for item in converted
        ]

    @translate_errors
    async def PublishEvent(
        self, request: pb.PublishEventRequest, context: Context
    ) -> pb.PublishEventResponse:
        (outcome,) = await self._ingestor.publish(self._caller(context), [_incoming(request.event)])
        if isinstance(outcome, Rejected):
            raise outcome.error
        return pb.PublishEventResponse(result=_result(outcome))

    @translate_errors
    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Context
    ) -> pb.ListDeliveriesResponse:
        page = await self._log.page(
            self._caller(context),
            page_size=request.page_size,
            page_token=request.page_token,
            subscription_id=request.subscription_id,
            message_id=request.message_id,
            state=_state_from_pb(request.state),
            tenant=request.tenant,
        )
        return pb.ListDeliveriesResponse(
            deliveries=[_delivery(d) for d in page.deliveries],
            next_page_token=page.next_page_token,
        )

    @translate_errors
    async def GetDelivery(
        self, request: pb.GetDeliveryRequest, context: Context
    ) -> pb.GetDeliveryResponse:
        found = await self._log.get(self._caller(context), request.id)
        return pb.GetDeliveryResponse(delivery=_delivery(found))

    @translate_errors
    async def RedeliverEvent(
        self, request: pb.RedeliverEventRequest, context: Context
    ) -> pb.RedeliverEventResponse:
        since = _datetime_of(request.since, field="since") if request.HasField("since") else None
        ids = await self._log.redeliver(
            self._caller(context),
            message_id=request.message_id,
            subscription_id=request.subscription_id,
            since=since,
            tenant=request.tenant,
        )
        return pb.RedeliverEventResponse(delivery_ids=ids)

    @translate_errors
    async def ListSigningKeys(
        self, request: pb.ListSigningKeysRequest, context: Context
    ) -> pb.ListSigningKeysResponse:
        # Public keys are public, but the API is not: any valid token may read them.
        self._caller(context)
        return pb.ListSigningKeysResponse(
            keys=[
                pb.SigningKey(
                    key_id=key.key_id,
                    algorithm=_ALGORITHMS_TO_PB[key.algorithm],
                    public_key_pem=key.public_key_pem,
                    create_time=timestamp_of(key.create_time),
                    active=key.active,
                )
                for key in self._keys.public_keys()
            ]
        )

    @translate_errors
    async def GetDeliveryActivity(
        self, request: pb.GetDeliveryActivityRequest, context: Context
    ) -> pb.GetDeliveryActivityResponse:
        activity = await self._activity.read(self._caller(context), request.tenant)
        return _activity(activity)


def _activity(activity: DeliveryActivity) -> pb.GetDeliveryActivityResponse:
    message = pb.GetDeliveryActivityResponse(
        seconds=[_activity_second(second) for second in activity.seconds],
        queue_depth=activity.queue_depth,
    )
    if activity.oldest_due_time is not None:
        message.oldest_due_time.CopyFrom(timestamp_of(activity.oldest_due_time))
    return message


def _activity_second(second: ActivitySecond) -> pb.ActivitySecond:
    return pb.ActivitySecond(
        start_time=timestamp_of(second.start_time),
        succeeded=second.succeeded,
        retrying=second.retrying,
        dead=second.dead,
    )


def _datetime_of(timestamp: Timestamp, *, field: str) -> datetime:
    """A protobuf Timestamp as a UTC datetime; INVALID_ARGUMENT outside years 1 to 9999."""
    try:
        return timestamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.of(
            field, "must be a valid timestamp between the years 1 and 9999"
        ) from None


def _incoming_or_rejected(event: pb.Event) -> IncomingEvent | Rejected:
    try:
        return _incoming(event)
    except WebhooksError as error:
        return Rejected(event.message_id, error)


def _incoming(event: pb.Event) -> IncomingEvent:
    timestamp = (
        _datetime_of(event.timestamp, field="timestamp") if event.HasField("timestamp") else None
    )
    return IncomingEvent(
        tenant=event.tenant,
        message_id=event.message_id,
        message_type=event.message_type,
        timestamp=timestamp,
        details=event.details,
        user=(
            EventUser(
                id=event.user.id, pool_id=event.user.pool_id, originator=event.user.originator
            )
            if event.HasField("user")
            else None
        ),
    )


def _result(outcome: IngestOutcome | Rejected) -> pb.PublishResult:
    if isinstance(outcome, Rejected):
        return _rejected(outcome)
    return pb.PublishResult(
        message_id=outcome.message_id,
        outcome=Result.OUTCOME_DUPLICATE if outcome.duplicate else Result.OUTCOME_ACCEPTED,
        deliveries=outcome.deliveries,
    )


def _rejected(rejected: Rejected) -> pb.PublishResult:
    error = rejected.error
    violations = error.violations if isinstance(error, InvalidArgument) else ()
    return pb.PublishResult(
        message_id=rejected.message_id,
        outcome=Result.OUTCOME_REJECTED,
        error=pb.EventError(
            code=status_code_of(error).name,
            message=str(error),
            field_violations=[
                pb.FieldViolation(field=v.field, description=v.description) for v in violations
            ],
        ),
    )


def _state_from_pb(value: int) -> DeliveryState | None:
    if value == pb.DELIVERY_STATE_UNSPECIFIED:
        return None
    state = _STATES_FROM_PB.get(value)
    if state is None:
        raise InvalidArgument.of("state", f"unknown delivery state {value}")
    return state


def _attempt(attempt: Attempt) -> pb.DeliveryAttempt:
    return pb.DeliveryAttempt(
        number=attempt.number,
        start_time=timestamp_of(attempt.start_time),
        status_code=attempt.status_code,
        latency_ms=attempt.latency_ms,
        error=attempt.error,
        response_snippet=attempt.response_snippet,
    )


def _delivery(delivery: Delivery) -> pb.Delivery:
    message = pb.Delivery(
        id=delivery.id,
        tenant=delivery.tenant,
        subscription_id=delivery.subscription_id,
        message_id=delivery.message_id,
        message_type=delivery.message_type,
        url=delivery.url,
        state=_STATES_TO_PB[delivery.state],
        attempt_count=delivery.attempt_count,
        create_time=timestamp_of(delivery.create_time),
        update_time=timestamp_of(delivery.update_time),
        attempts=[_attempt(a) for a in delivery.attempts],
    )
    if delivery.next_attempt_time is not None and delivery.state in (
        DeliveryState.PENDING,
        DeliveryState.RETRYING,
    ):
        message.next_attempt_time.CopyFrom(timestamp_of(delivery.next_attempt_time))
    return message
