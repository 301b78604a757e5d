"""What a delivery worker's next claim looks at, and how many deliveries it asks for.

Plain bookkeeping, with no database and no event loop: the worker asks `next_claim` for
the claim to make, tells `claimed` what it returned, and in between tells of new work
(`wake`), of full endpoints with room again (`endpoint_has_room`) and of polls
(`look_again`).

A claim that skips the subscriptions of full endpoints reads past every due delivery of
theirs, and a dead endpoint's backlog may be huge. So while some endpoint is full, what
was looked through is remembered (`LookedThrough`), and the subscriptions that ingestion
names (`wake`) and those of an endpoint with room again are claimed through their own
index; other new work (a redelivery) by a look at what became due since. A poll looks
through everything again.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from dispatcher_service.domain import ClaimedDelivery

__all__ = ["LOOK_BACK", "Claim", "ClaimPlanner", "ClaimResult", "LookedThrough"]

# Subscriptions named by `wake` and not claimed yet; beyond this, any new work is assumed.
_MAX_WOKEN = 10_000
# How far back a look at new deliveries reaches before the last one: an ingestion takes
# its time before its transaction commits, so its deliveries may show up that late.
LOOK_BACK = timedelta(seconds=0.25)


@dataclass(frozen=True)
class LookedThrough:
    """What the claims since the last look through everything have found: every delivery
    due by `until` outside `besides` was then claimed or not due. `drained`: the last one
    came back short, or all it took went to endpoints now full, so looking again is left
    to new work.

    While that holds, a claim need not walk past the skipped subscriptions' backlog again
    (a dead endpoint may have many thousands of due deliveries): it looks at what became
    due after `until`, or at one subscription through its own index."""

    besides: frozenset[str]
    until: datetime
    drained: bool


@dataclass(frozen=True, kw_only=True)
class Claim:
    """Up to `limit` due deliveries, oldest due first: none of the subscriptions in
    `skipped` (their endpoints are full); given `due_after`, only those due after it;
    given `only`, only that subscription's."""

    limit: int
    skipped: frozenset[str]
    due_after: datetime | None = None
    only: str | None = None

    @property
    def excluded(self) -> frozenset[str]:
        """The subscriptions the store leaves out: a claim of one subscription reads its
        own index, so it has none to skip."""
        return self.skipped if self.only is None else frozenset()


@dataclass(frozen=True, kw_only=True)
class ClaimResult:
    """What a claim made at `now` took, and what became of it: of `sent`, `given_back`
    went back (their endpoints were full) and `queued` wait for a slot; `dead` were taken
    dead (their lease had run out on their last attempt). `full`: the subscriptions of the
    endpoints full once it was taken in."""

    sent: Sequence[ClaimedDelivery]
    dead: Sequence[ClaimedDelivery]
    given_back: int
    queued: int
    full: frozenset[str]
    now: datetime


class ClaimPlanner:
    def __init__(self, *, claim_batch: int, max_in_flight: int) -> None:
        self._claim_batch = claim_batch
        # Claim in batches: waiting until a good share of the slots is free costs the
        # receivers nothing and saves a query per finished delivery.
        self.claim_room = max(1, min(claim_batch, max_in_flight) // 2)
        # How many deliveries a claim asks for: less after deliveries had to be given back
        # (one busy endpoint holds most of what is due), more again once claims fit.
        self._claim_size = claim_batch
        self._looked: LookedThrough | None = None
        self._new_work = False
        self._woken: set[str] = set()

    def wake(self, subscription_ids: Collection[str] = ()) -> None:
        """New deliveries are due: for `subscription_ids`, or for any subscription (none
        given, or more named than are worth remembering)."""
        if subscription_ids and len(self._woken) + len(subscription_ids) <= _MAX_WOKEN:
            self._woken.update(subscription_ids)
        else:
            self._new_work = True

    def hand_off_room(self, free: int) -> int:
        """How many new deliveries ingestion may hand over of `free` room: room for a whole
        claim stays free for what else is due (retries, redeliveries, what other replicas
        left), which is thus never starved."""
        return free - self.claim_room

    def next_claim(self, *, free: int, full: frozenset[str]) -> Claim | None:
        """The claim to make with `free` room (at least `claim_room`), skipping `full` (the
        subscriptions of full endpoints); None: nothing to look at until new work, an
        endpoint with room again or a poll."""
        limit = min(free, self._claim_size)
        looked = self._looked if full else None
        if looked is None:
            self._new_work = False
            return Claim(limit=limit, skipped=full)
        return self._beyond(looked, limit=limit, full=full)

    def claimed(self, claim: Claim, result: ClaimResult) -> bool:
        """Takes in what `claim` returned. True: it found all that is due (it came back
        short and skipped nothing), so the next one waits for new work or a poll."""
        self._resize(claim, result)
        taken = [*result.sent, *result.dead]
        short = len(taken) < claim.limit
        if claim.only is None:
            self._looked_through(taken, short=short, skipped=claim.skipped, result=result)
        else:
            self._looked_at(claim.only, short=short, full=result.full)
        return short and not claim.skipped

    def endpoint_has_room(self, room: int) -> None:
        """A full endpoint has room for `room` again: the next claim asks for that many at
        least, for its subscriptions."""
        self._claim_size = max(self._claim_size, min(room, self._claim_batch))

    def look_again(self) -> None:
        """The next claim looks through everything: after a poll, for what other replicas
        gave back and leases that ran out; after a hand-off was given back, as it is due
        again."""
        self._looked = None

    def _beyond(self, looked: LookedThrough, *, limit: int, full: frozenset[str]) -> Claim | None:
        """A claim that leaves out what `looked` says was looked through."""
        # Those of full endpoints are claimed once these have room again.
        self._woken -= full
        freed = looked.besides - full
        if freed:
            return Claim(limit=limit, skipped=full, only=min(freed))  # room again
        if self._woken:
            return Claim(limit=limit, skipped=full, only=min(self._woken))
        if looked.drained and not self._new_work:
            return None
        self._new_work = False
        return Claim(limit=limit, skipped=full, due_after=looked.until - LOOK_BACK)

    def _resize(self, claim: Claim, result: ClaimResult) -> None:
        if result.given_back:
            self._claim_size = max(1, len(result.sent) - result.given_back)
        elif len(result.sent) == claim.limit and not result.queued:
            # Everything started at once: ask for more next time.
            self._claim_size = min(self._claim_batch, 2 * self._claim_size)

    def _looked_through(
        self,
        taken: list[ClaimedDelivery],
        *,
        short: bool,
        skipped: frozenset[str],
        result: ClaimResult,
    ) -> None:
        """Remembers a claim of all subscriptions but `skipped`."""
        # Oldest due first: everything outside `skipped` due before the last one claimed
        # was claimed too. When all it claimed went to endpoints now full, what else is due
        # is left to new events, endpoints with room and polls: looking again would walk
        # past their backlog for little. What was given back just now stays due: its
        # subscriptions (their endpoints are full now) do not count as looked through.
        until = result.now if short else max(delivery.due_time for delivery in taken)
        drained = short or {delivery.subscription_id for delivery in taken} <= result.full
        self._looked = LookedThrough(besides=skipped | result.full, until=until, drained=drained)
        if short:
            self._woken.clear()

    def _looked_at(self, subscription_id: str, *, short: bool, full: frozenset[str]) -> None:
        """Remembers a claim of one subscription: short, it took all that was due there."""
        if short:
            self._woken.discard(subscription_id)
        looked = self._looked
        if looked is None:  # a hand-off given back meanwhile: everything is looked at next
            return
        besides = looked.besides - {subscription_id} if short else looked.besides
        self._looked = replace(looked, besides=besides | full)
