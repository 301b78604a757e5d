"""The routing table: which subscriptions receive an event of a tenant and message type.

Ingestion asks it for every event, so a lookup is a few dict reads whatever the number of
subscriptions: one for the exact type, and one per distinct prefix length among the tenant's
patterns (`event.claim.*` is the prefix `event.claim.`). Only enabled subscriptions are
indexed; disabled ones are still known by id, for whoever must tell "disabled" from "gone".

A table is changed in place by one writer (the subscription follower, on the event loop)
and read on that same loop, so it takes no locks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from dispatcher_service.signing import SignatureAlgorithm

__all__ = ["Change", "Route", "RoutingTable"]

_WILDCARD = "*"


class Change(enum.Enum):
    """What happened to a subscription."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where and how to deliver for one subscription."""

    subscription_id: str
    tenant: str
    url: str
    signature_algorithm: SignatureAlgorithm
    # The Standard Webhooks secret (`whsec_...`), or None when the subscription has none.
    secret: str | None
    enabled: bool


@dataclass(frozen=True)
class _Known:
    route: Route
    message_types: tuple[str, ...]


class _TenantIndex:
    """One tenant's enabled routes by exact type and by pattern prefix."""

    def __init__(self) -> None:
        # Inner dicts keep insertion order and make removal by id O(1).
        self.exact: dict[str, dict[str, Route]] = {}
        self.prefixes: dict[str, dict[str, Route]] = {}
        self.prefix_lengths: tuple[int, ...] = ()

    def add(self, route: Route, message_types: Iterable[str]) -> None:
        for entry in message_types:
            bucket, key = self._bucket_of(entry)
            bucket.setdefault(key, {})[route.subscription_id] = route
        self._reindex_prefix_lengths()

    def remove(self, subscription_id: str, message_types: Iterable[str]) -> None:
        for entry in message_types:
            bucket, key = self._bucket_of(entry)
            routes = bucket.get(key)
            if routes is None:
                continue
            routes.pop(subscription_id, None)
            if not routes:
                del bucket[key]
        self._reindex_prefix_lengths()

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def lookup(self, message_type: str) -> list[Route]:
        exact = self.exact.get(message_type)
        if not self.prefix_lengths:
            return list(exact.values()) if exact else []
        found: dict[str, Route] = dict(exact) if exact else {}
        for length in self.prefix_lengths:
            matched = self.prefixes.get(message_type[:length])
            if matched:
                # A subscription listing both the type and a pattern gets one delivery.
                for subscription_id, route in matched.items():
                    found.setdefault(subscription_id, route)
        return list(found.values())

    def _bucket_of(self, entry: str) -> tuple[dict[str, dict[str, Route]], str]:
        if entry.endswith(_WILDCARD):
            return self.prefixes, entry[: -len(_WILDCARD)]
        return self.exact, entry

    def _reindex_prefix_lengths(self) -> None:
        self.prefix_lengths = tuple(sorted({len(prefix) for prefix in self.prefixes}))


class RoutingTable:
    """Every subscription the dispatcher knows, indexed for `routes_for`."""

    def __init__(self) -> None:
        self._known: dict[str, _Known] = {}
        self._tenants: dict[str, _TenantIndex] = {}

    def apply(self, change: Change, route: Route, *, message_types: Iterable[str]) -> None:
        """Records a created, updated or deleted subscription.

        Created and updated both mean "this is its state now", so replaying a change, or
        hearing of an update before the creation, leaves the right state.
        """
        self._forget(route.subscription_id)
        if change is Change.DELETED:
            return
        known = _Known(route, tuple(message_types))
        self._known[route.subscription_id] = known
        if route.enabled:
            self._tenants.setdefault(route.tenant, _TenantIndex()).add(route, known.message_types)

    def routes_for(self, tenant: str, message_type: str) -> list[Route]:
        """The enabled subscriptions of `tenant` that receive `message_type`, each once."""
        index = self._tenants.get(tenant)
        return index.lookup(message_type) if index is not None else []

    def get(self, subscription_id: str) -> Route | None:
        """The subscription's route, enabled or not; None once it is deleted."""
        known = self._known.get(subscription_id)
        return known.route if known is not None else None

    def __len__(self) -> int:
        return len(self._known)

    def _forget(self, subscription_id: str) -> None:
        known = self._known.pop(subscription_id, None)
        if known is None or not known.route.enabled:
            return
        tenant = known.route.tenant
        index = self._tenants[tenant]
        index.remove(subscription_id, known.message_types)
        if not index:
            del self._tenants[tenant]
