"""The last minute of recorded attempts, second by second, by outcome and tenant.

A live view for GetDeliveryActivity, kept in memory by each dispatcher: a ring of
`WINDOW_SECONDS` slots, one per second, each counting the attempts recorded in it by
tenant. A slot is emptied when its second leaves the window, so memory holds at most a
minute's worth of tenants; a tenant with nothing in the window is in no slot. Clock-free:
callers say when (`at`, `now`), so tests need no sleeping.

Used on the event loop only, so it takes no locks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from dispatcher_service.domain import DeliveryState

__all__ = ["WINDOW_SECONDS", "ActivitySecond", "ActivityWindow"]

WINDOW_SECONDS = 60
# Where each outcome is counted in a slot's counts.
_INDEX = {DeliveryState.SUCCEEDED: 0, DeliveryState.RETRYING: 1, DeliveryState.DEAD: 2}


@dataclass(frozen=True)
class ActivitySecond:
    """The attempts recorded in the second starting at `start_time`, by the state they
    left their delivery in."""

    start_time: datetime
    succeeded: int = 0
    retrying: int = 0
    dead: int = 0


class _Slot:
    """One second of the ring: its counts by tenant, and their total."""

    def __init__(self, second: int) -> None:
        self.second = second
        self.by_tenant: dict[str, list[int]] = {}
        self.total = [0, 0, 0]

    def add(self, tenant: str, index: int) -> None:
        self.by_tenant.setdefault(tenant, [0, 0, 0])[index] += 1
        self.total[index] += 1

    def counts(self, tenant: str | None) -> list[int]:
        """The counts of `tenant`, or of every tenant (None)."""
        if tenant is None:
            return self.total
        return self.by_tenant.get(tenant, [0, 0, 0])


class ActivityWindow:
    """Counts of recorded attempts (`record`) for the last `WINDOW_SECONDS` seconds
    (`seconds`); the window ends at the latest time either was told."""

    def __init__(self) -> None:
        self._slots = [_Slot(second) for second in range(-WINDOW_SECONDS, 0)]
        self._latest = -1

    def record(self, tenant: str, state: DeliveryState, at: datetime) -> None:
        """Counts an attempt of `tenant`'s recorded at `at` as leaving its delivery in
        `state` (SUCCEEDED, RETRYING or DEAD); ignored when `at` is before the window."""
        index = _INDEX[state]
        second = _second_of(at)
        self._advance(second)
        if second <= self._latest - WINDOW_SECONDS:
            return  # late: its second has left the window
        self._slot(second).add(tenant, index)

    def seconds(self, tenant: str | None, now: datetime) -> list[ActivitySecond]:
        """The `WINDOW_SECONDS` seconds up to the one containing `now`, oldest first, with
        `tenant`'s counts (every tenant's summed when None)."""
        last = _second_of(now)
        self._advance(last)
        return [
            self._second(second, tenant) for second in range(last - WINDOW_SECONDS + 1, last + 1)
        ]

    def tenants(self) -> set[str]:
        """The tenants with attempts in the window."""
        return {tenant for slot in self._slots for tenant in slot.by_tenant}

    def _advance(self, second: int) -> None:
        """Moves the window's end to `second` if later, emptying the slots it leaves."""
        if second <= self._latest:
            return
        for fresh in range(max(self._latest + 1, second - WINDOW_SECONDS + 1), second + 1):
            self._slots[fresh % WINDOW_SECONDS] = _Slot(fresh)
        self._latest = second

    def _slot(self, second: int) -> _Slot:
        return self._slots[second % WINDOW_SECONDS]

    def _second(self, second: int, tenant: str | None) -> ActivitySecond:
        slot = self._slot(second)
        succeeded, retrying, dead = slot.counts(tenant) if slot.second == second else (0, 0, 0)
        return ActivitySecond(
            start_time=datetime.fromtimestamp(second, UTC),
            succeeded=succeeded,
            retrying=retrying,
            dead=dead,
        )


def _second_of(moment: datetime) -> int:
    """The whole second (since the epoch) that contains `moment`."""
    return math.floor(moment.timestamp())
