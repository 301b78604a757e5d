"""Reading and replaying deliveries: who may see what, and what a redelivery means."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from dispatcher_service.domain import Delivery, DeliveryQuery, DeliveryState
from dispatcher_service.store import DeliveryCursor, DeliveryStore
from service_common.auth import Caller, Scope
from service_common.errors import InvalidArgument
from service_common.page_tokens import decode_page_token, encode_page_token

__all__ = ["DeliveryLog", "DeliveryPage"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_ID_LENGTH = 200
# The ids the store gives deliveries: "dlv_" and 32 hex digits (a time-ordered id now, a
# uuid4 in hex before). A page token's id goes into a query, so nothing else gets that far.
_DELIVERY_ID_SHAPE = re.compile(r"dlv_[0-9a-f]{32}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[Delivery]
    next_page_token: str


class DeliveryLog:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        clock: Callable[[], datetime] = _utc_now,
        on_rescheduled: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_rescheduled = on_rescheduled

    async def get(self, caller: Caller, delivery_id: str) -> Delivery:
        caller.require(Scope.DELIVERIES_READ)
        _check_id(delivery_id, field="id", required=True)
        return await asyncio.to_thread(self._store.get, delivery_id, tenant=_own(caller))

    async def page(
        self,
        caller: Caller,
        *,
        page_size: int,
        page_token: str,
        subscription_id: str,
        message_id: str,
        state: DeliveryState | None,
        tenant: str,
    ) -> DeliveryPage:
        caller.require(Scope.DELIVERIES_READ)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.of("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        _check_id(subscription_id, field="subscription_id")
        _check_id(message_id, field="message_id")
        query = DeliveryQuery(
            tenant=caller.tenant_to_read(tenant),
            page_size=page_size or DEFAULT_PAGE_SIZE,
            subscription_id=subscription_id or None,
            message_id=message_id or None,
            state=state,
        )
        filters = [query.tenant, query.subscription_id, query.message_id, query.state]
        position = decode_page_token(page_token, filters, id_shape=_DELIVERY_ID_SHAPE)
        after = None if position is None else DeliveryCursor(*position)
        found, following = await asyncio.to_thread(self._store.page, query, after=after)
        token = (
            encode_page_token((following.create_time, following.id), filters) if following else ""
        )
        return DeliveryPage(found, token)

    async def redeliver(
        self,
        caller: Caller,
        *,
        message_id: str,
        subscription_id: str,
        since: datetime | None,
        tenant: str,
    ) -> list[str]:
        """Replays one event, or a subscription's failed deliveries since a time."""
        caller.require(Scope.DELIVERIES_WRITE)
        only = caller.tenant_to_read(tenant)
        _check_id(message_id, field="message_id")
        _check_id(subscription_id, field="subscription_id")
        now = self._clock()
        if message_id:
            if since is not None:
                raise InvalidArgument.of("since", "applies only without message_id")
            ids = await asyncio.to_thread(
                self._store.redeliver_event,
                tenant=only,
                message_id=message_id,
                subscription_id=subscription_id or None,
                now=now,
            )
        elif subscription_id and since is not None:
            ids = await asyncio.to_thread(
                self._store.redeliver_failed,
                tenant=only,
                subscription_id=subscription_id,
                since=since,
                now=now,
            )
        else:
            raise InvalidArgument.of(
                "message_id", "give message_id, or subscription_id together with since"
            )
        if ids:
            self._on_rescheduled()
        return ids


def _own(caller: Caller) -> str | None:
    return None if caller.all_tenants else caller.tenant


def _check_id(value: str, *, field: str, required: bool = False) -> None:
    if required and not value:
        raise InvalidArgument.of(field, "required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument.of(field, f"at most {MAX_ID_LENGTH} characters")
