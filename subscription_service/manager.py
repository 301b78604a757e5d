"""The business rules of subscriptions: who may do what, what is valid, what changes.

Plain Python that tests call without a server; the gRPC servicer only translates
protobuf to these calls and back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from service_common.auth import Caller, Scope
from service_common.errors import FieldViolation, InvalidArgument
from subscription_service import validation
from subscription_service.change_feed import ChangeFeed
from subscription_service.change_log import ChangeLog
from subscription_service.domain import (
    Change,
    ChangeType,
    ListQuery,
    NewSubscription,
    SignatureAlgorithm,
    Subscription,
    SubscriptionPatch,
)
from subscription_service.pagination import decode_page_token, encode_page_token
from subscription_service.store import SubscriptionStore

__all__ = [
    "MUTABLE_FIELDS",
    "Page",
    "Resumed",
    "SnapshotComplete",
    "SubscriptionFields",
    "SubscriptionManager",
    "WatchItem",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_ID_LENGTH = 64
MUTABLE_FIELDS = frozenset(
    {
        "url",
        "message_types",
        "enabled",
        "description",
        "signature_algorithm",
        "secret",
        "disabled_reason",
    }
)
_ETAG_RE = re.compile(r'^"(\d{1,18})"$')
_PREFIX = "subscription."


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Page:
    subscriptions: list[Subscription]
    next_page_token: str


@dataclass(frozen=True)
class SnapshotComplete:
    """Marks the end of the snapshot in a watch stream; it reflects the changes up to
    `position` of the change log."""

    position: int


@dataclass(frozen=True)
class Resumed:
    """Starts a watch stream that resumes after `position`: the changes after it follow."""

    position: int


@dataclass(frozen=True)
class WatchItem:
    """One subscription of the snapshot (change None, position 0) or one change after it."""

    subscription: Subscription
    change: ChangeType | None
    position: int = 0


@dataclass(frozen=True, kw_only=True)
class SubscriptionFields:
    """The caller's values for a new subscription, before validation."""

    tenant: str = ""
    url: str = ""
    message_types: tuple[str, ...] = ()
    enabled: bool = True
    description: str = ""
    signature_algorithm: SignatureAlgorithm | None = None
    secret: str = ""


class SubscriptionManager:
    def __init__(
        self,
        *,
        store: SubscriptionStore,
        changes: ChangeLog,
        feed: ChangeFeed,
        known_message_types: Collection[str],
        resume_limit: int = 10_000,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`resume_limit`: how many changes a watch may resume after at most; a watcher
        further behind gets a snapshot."""
        self._store = store
        self._changes = changes
        self._feed = feed
        self._known = frozenset(known_message_types)
        self._resume_limit = resume_limit
        self._clock = clock

    async def create(self, caller: Caller, fields: SubscriptionFields) -> Subscription:
        caller.require(Scope.SUBSCRIPTIONS_WRITE)
        tenant = caller.tenant_to_write(fields.tenant, field=_PREFIX + "tenant")
        _raise_if_any(
            validation.check_url(fields.url, field=_PREFIX + "url")
            + validation.check_message_types(
                fields.message_types, known=self._known, field=_PREFIX + "message_types"
            )
            + validation.check_description(fields.description, field=_PREFIX + "description")
            + validation.check_secret(fields.secret, field=_PREFIX + "secret")
        )
        new = NewSubscription(
            tenant=tenant,
            url=fields.url,
            message_types=fields.message_types,
            enabled=fields.enabled,
            description=fields.description,
            signature_algorithm=fields.signature_algorithm or SignatureAlgorithm.ECDSA_P256_SHA256,
            secret=fields.secret or None,
        )
        created = await asyncio.to_thread(self._store.create, new, now=self._clock())
        self._feed.wake()
        return created

    async def get(self, caller: Caller, subscription_id: str) -> Subscription:
        caller.require(Scope.SUBSCRIPTIONS_READ)
        _check_id(subscription_id, field="id")
        return await asyncio.to_thread(self._store.get, subscription_id, tenant=_own_tenant(caller))

    async def list(
        self,
        caller: Caller,
        *,
        page_size: int,
        page_token: str,
        message_type: str,
        enabled: bool | None,
        tenant: str,
    ) -> Page:
        caller.require(Scope.SUBSCRIPTIONS_READ)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument.of("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        if message_type:
            _raise_if_any(
                validation.check_message_types(
                    [message_type], known=self._known, field="message_type"
                )
            )
        query = ListQuery(
            tenant=caller.tenant_to_read(tenant),
            page_size=page_size or DEFAULT_PAGE_SIZE,
            message_type=message_type or None,
            enabled=enabled,
        )
        after = decode_page_token(page_token, query)
        found, following = await asyncio.to_thread(self._store.page, query, after=after)
        token = encode_page_token(following, query) if following is not None else ""
        return Page(found, token)

    async def update(
        self,
        caller: Caller,
        subscription_id: str,
        *,
        patch: SubscriptionPatch,
        etag: str,
    ) -> Subscription:
        """Applies the non-None fields of `patch`; `etag`, when set, must be the current one."""
        caller.require(Scope.SUBSCRIPTIONS_WRITE)
        _check_id(subscription_id, field=_PREFIX + "id")
        if patch == SubscriptionPatch():
            raise InvalidArgument.of("update_mask", "name at least one field to change")
        self._check_patch(patch)
        updated = await asyncio.to_thread(
            self._store.update,
            subscription_id,
            tenant=_own_tenant(caller),
            patch=patch,
            expected_version=_version_of(etag, field=_PREFIX + "etag"),
            now=self._clock(),
        )
        self._feed.wake()
        return updated

    async def delete(self, caller: Caller, subscription_id: str, *, etag: str) -> None:
        caller.require(Scope.SUBSCRIPTIONS_WRITE)
        _check_id(subscription_id, field="id")
        await asyncio.to_thread(
            self._store.delete,
            subscription_id,
            tenant=_own_tenant(caller),
            expected_version=_version_of(etag, field="etag"),
            now=self._clock(),
        )
        self._feed.wake()

    async def watch(
        self, caller: Caller, *, tenant: str, resume_after: int = 0
    ) -> AsyncIterator[WatchItem | SnapshotComplete | Resumed]:
        """The caller's subscriptions, a SnapshotComplete, then each later change in order.

        With `resume_after`, a Resumed and the changes after that position instead, when
        the change log still has them all; otherwise the snapshot as without it.
        """
        caller.require(Scope.SUBSCRIPTIONS_READ)
        only = caller.tenant_to_read(tenant)
        if resume_after < 0:
            raise InvalidArgument.of("resume_after", "must be 0 or a position a watch sent")
        # Listen before reading, so that no change committed in between is missed; the
        # hub may then repeat changes already read, which positions tell apart.
        async with self._feed.watch() as watcher:
            last = 0
            async for item in self._opening(only, resume_after):
                last = max(last, item.position)
                yield item
            async for change in watcher.changes():
                if change.position <= last or not _visible(change, only):
                    continue
                last = change.position
                yield WatchItem(change.subscription, change.type, change.position)

    async def _opening(
        self, only: str | None, resume_after: int
    ) -> AsyncIterator[WatchItem | SnapshotComplete | Resumed]:
        """What a watch starts with: the changes after `resume_after` if the log still
        has them all, else the snapshot."""
        missed = None
        if resume_after:
            missed = await asyncio.to_thread(
                self._changes.resume, resume_after, tenant=only, limit=self._resume_limit
            )
        if missed is not None:
            yield Resumed(resume_after)
            for change in missed:
                yield WatchItem(change.subscription, change.type, change.position)
            return
        snapshot, position = await asyncio.to_thread(self._store.snapshot, tenant=only)
        for subscription in snapshot:
            yield WatchItem(subscription, None)
        yield SnapshotComplete(position)

    def _check_patch(self, patch: SubscriptionPatch) -> None:
        violations: list[FieldViolation] = []
        if patch.url is not None:
            violations += validation.check_url(patch.url, field=_PREFIX + "url")
        if patch.message_types is not None:
            violations += validation.check_message_types(
                patch.message_types, known=self._known, field=_PREFIX + "message_types"
            )
        if patch.description is not None:
            violations += validation.check_description(
                patch.description, field=_PREFIX + "description"
            )
        if patch.disabled_reason is not None:
            violations += validation.check_disabled_reason(
                patch.disabled_reason, field=_PREFIX + "disabled_reason"
            )
        if patch.secret is not None:
            violations += validation.check_secret(patch.secret, field=_PREFIX + "secret")
        _raise_if_any(violations)


def _visible(change: Change, tenant: str | None) -> bool:
    return tenant is None or change.subscription.tenant == tenant


def _own_tenant(caller: Caller) -> str | None:
    return None if caller.all_tenants else caller.tenant


def _check_id(subscription_id: str, *, field: str) -> None:
    if not subscription_id:
        raise InvalidArgument.of(field, "required")
    if len(subscription_id) > MAX_ID_LENGTH:
        raise InvalidArgument.of(field, f"at most {MAX_ID_LENGTH} characters")


def _version_of(etag: str, *, field: str) -> int | None:
    if not etag:
        return None
    match = _ETAG_RE.fullmatch(etag)
    if match is None:
        raise InvalidArgument.of(field, "is not an etag this service issued")
    return int(match.group(1))


def _raise_if_any(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)
