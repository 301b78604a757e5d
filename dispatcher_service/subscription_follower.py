"""Keeps the dispatcher's routing table current by following `WatchSubscriptions`.

A first connection builds a table from the snapshot and swaps it in whole at the
SNAPSHOT_COMPLETE marker, so a half-built table is never served; the changes that follow
are applied to it as they come. The follower remembers the change log position of the
last message it applied (SNAPSHOT_COMPLETE's, then each change's). Whatever ends the
stream (the subscription service restarting, a network failure, the watch falling too
far behind), the follower connects again after a jittered exponential delay and asks to
resume after that position: on RESUMED it keeps its table and applies the changes that
follow, which are exactly those it missed. When the service can no longer serve that
position (its log was pruned, or it is another database) it sends a snapshot instead,
built into a new table and swapped in as on the first connection. A service that sends
no positions (0) gets no resume requests. Meanwhile the last complete table keeps
serving: a slightly stale table beats refusing every event while the subscription
service restarts.
"""

from __future__ import annotations

import asyncio
import logging
import random as random_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from dispatcher_service.routing import Change, Route, RoutingTable
from dispatcher_service.signing import DEFAULT_ALGORITHM, SignatureAlgorithm
from service_common.lifecycle import cancel_and_wait
from webhooks.v1 import subscription_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2_grpc as pb_grpc

__all__ = ["Backoff", "SubscriptionFollower"]

log = logging.getLogger(__name__)

Watch = pb.WatchSubscriptionsResponse
_CHANGES = {
    Watch.CHANGE_TYPE_SNAPSHOT: Change.CREATED,
    Watch.CHANGE_TYPE_CREATED: Change.CREATED,
    Watch.CHANGE_TYPE_UPDATED: Change.UPDATED,
    Watch.CHANGE_TYPE_DELETED: Change.DELETED,
}
_ALGORITHMS = {
    pb.SIGNATURE_ALGORITHM_UNSPECIFIED: DEFAULT_ALGORITHM,
    pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256: SignatureAlgorithm.ECDSA_P256_SHA256,
    pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256: SignatureAlgorithm.RSA_PKCS1_SHA256,
}
# The watch is idle for long stretches, and only pings find a connection that died without
# a word. gRPC servers refuse pings more often than every 5 minutes unless told otherwise.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 360_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)
# Past this many failures in a row the delay is at its cap anyway; it keeps powers finite.
_MAX_EXPONENT = 32


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delays between reconnections: exponential, capped, with jitter."""

    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    multiplier: float = 2.0

    def delay(self, *, failures: int, random: Callable[[], float]) -> float:
        """Between half and all of `initial * multiplier ** failures`, capped.

        Half is kept so that replicas cut off together spread out without reconnecting at
        once in a storm; the other half is random.
        """
        exponent = min(failures, _MAX_EXPONENT)
        ceiling = min(self.max_seconds, self.initial_seconds * self.multiplier**exponent)
        return ceiling * (0.5 + 0.5 * random())


class SubscriptionFollower:
    """Follows the subscription service; `table` is always a complete routing table.

    Call `start()` on a running event loop and `await stop()` when done. `ready` is set
    once the first snapshot is complete, and stays set through reconnections.
    """

    def __init__(
        self,
        target: str,
        token: str,
        *,
        table_factory: Callable[[], RoutingTable] = RoutingTable,
        backoff: Backoff = Backoff(),  # frozen, so sharing it is harmless
        random: Callable[[], float] = random_module.random,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> None:
        self.ready = asyncio.Event()
        self._target = target
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._table_factory = table_factory
        self._backoff = backoff
        self._random = random
        self._credentials = credentials
        self._channel_options = tuple(channel_options)
        self._table = table_factory()
        # The change log position `_table` reflects; 0 while unknown (nothing to resume).
        self._position = 0
        self._syncs = 0
        self._warned_of_missing_secrets = False
        self._task: asyncio.Task[None] | None = None

    @property
    def table(self) -> RoutingTable:
        """The current table (empty until `ready`)."""
        return self._table

    @property
    def syncs(self) -> int:
        """How many connections succeeded: a complete snapshot swapped in, or a resume."""
        return self._syncs

    @property
    def position(self) -> int:
        """The change log position the table reflects; 0 when the service sends none."""
        return self._position

    def is_ready(self) -> bool:
        return self.ready.is_set()

    def routes_for(self, tenant: str, message_type: str) -> list[Route]:
        return self._table.routes_for(tenant, message_type)

    def route(self, subscription_id: str) -> Route | None:
        return self._table.get(subscription_id)

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the follower is already started")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="subscription-follower"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)

    async def _run(self) -> None:
        failures = 0
        while True:
            syncs_before = self._syncs
            try:
                await self._follow()
                log.warning("the subscription watch at %s ended; reconnecting", self._target)
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "watching subscriptions at %s failed (%s: %s); reconnecting",
                    self._target,
                    error.code().name,
                    error.details(),
                )
            except Exception:
                # Whatever it was, giving up would freeze routing until a restart.
                log.warning("following subscriptions failed; reconnecting", exc_info=True)
            failures = 0 if self._syncs > syncs_before else failures + 1
            await asyncio.sleep(self._backoff.delay(failures=failures, random=self._random))

    async def _follow(self) -> None:
        async with self._channel() as channel:
            stub = pb_grpc.SubscriptionServiceStub(channel)
            request = pb.WatchSubscriptionsRequest(resume_after=self._position)
            call = stub.WatchSubscriptions(request, metadata=self._metadata)
            # A new table until the stream says it resumes the current one.
            snapshot: RoutingTable | None = self._table_factory()
            async for message in call:
                snapshot = self._handle(message, snapshot)

    def _channel(self) -> grpc.aio.Channel:
        # A new channel per connection: the channel's own reconnection backoff (up to two
        # minutes) would otherwise outlast ours once the service is back.
        if self._credentials is not None:
            return grpc.aio.secure_channel(
                self._target, self._credentials, options=self._channel_options
            )
        return grpc.aio.insecure_channel(self._target, options=self._channel_options)

    def _handle(self, message: Watch, snapshot: RoutingTable | None) -> RoutingTable | None:
        """Applies one message; returns the table still being built, None once the current
        table is the one to change (swapped in, or resumed)."""
        if message.change_type == Watch.CHANGE_TYPE_SNAPSHOT_COMPLETE:
            if snapshot is not None:
                self._swap(snapshot, position=message.position)
            return None
        if message.change_type == Watch.CHANGE_TYPE_RESUMED:
            self._resumed(message.position)
            return None
        change = _CHANGES.get(message.change_type)
        if change is None:
            log.warning("ignoring a watch message of unknown type %d", message.change_type)
            return snapshot
        self._check_secret(message.subscription)
        route, message_types = _route_of(message.subscription)
        if snapshot is not None:
            snapshot.apply(change, route, message_types=message_types)
            return snapshot
        self._table.apply(change, route, message_types=message_types)
        self._position = message.position
        return None

    def _swap(self, table: RoutingTable, *, position: int) -> None:
        self._table = table
        self._position = position
        self._syncs += 1
        self.ready.set()
        log.info("routing table loaded: %d subscriptions", len(table))

    def _resumed(self, position: int) -> None:
        if position != self._position or not position:
            asked, self._position = self._position, 0
            # Changes after another position would leave the table wrong: the next
            # connection starts over from a snapshot.
            raise ValueError(f"asked to resume after {asked}, resumed after {position}")
        self._syncs += 1
        log.info("subscription watch resumed after change %d", position)

    def _check_secret(self, subscription: pb.Subscription) -> None:
        if subscription.has_secret and not subscription.secret:
            if not self._warned_of_missing_secrets:
                log.warning(
                    "the watch does not carry subscription secrets: the token must be for "
                    "every tenant (*) with the admin scope; deliveries go without "
                    "webhook-signature"
                )
            self._warned_of_missing_secrets = True


def _route_of(subscription: pb.Subscription) -> tuple[Route, tuple[str, ...]]:
    route = Route(
        subscription_id=subscription.id,
        tenant=subscription.tenant,
        url=subscription.url,
        # An algorithm newer than this dispatcher: signing with the default beats not at all.
        signature_algorithm=_ALGORITHMS.get(subscription.signature_algorithm, DEFAULT_ALGORITHM),
        secret=subscription.secret or None,
        enabled=subscription.enabled,
    )
    return route, tuple(subscription.message_types)
