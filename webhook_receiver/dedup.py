"""De-duplicating deliveries by messageId.

Delivery is at least once: the same event can arrive again (a retry after a lost answer, a
redelivery). ``Deduplicator`` remembers the messageIds it has processed, in memory, bounded
in size and in time, safe to share between threads.

Mark a message done only once it is processed: if processing fails, forget it, so that the
retry is processed rather than dropped as a duplicate. ``process`` does exactly that::

    with deduplicator.process(webhook.message_id) as claim:
        if claim is Claim.NEW:
            handle(webhook)            # an exception here releases the claim
        elif claim is Claim.IN_PROGRESS:
            return 409                 # another worker has it: ask for a retry later
    return 200                         # NEW and done, or DUPLICATE: acknowledge

Several receiver processes need a shared store instead (a unique key on messageId in the
database that the handler writes to is the usual one).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum

__all__ = ["Claim", "Deduplicator"]

DEFAULT_MAX_ENTRIES = 100_000
# Retries span about a day and redeliveries can come later: keep ids for two days.
DEFAULT_TTL_SECONDS = 2 * 24 * 3600.0


class Claim(Enum):
    """What ``claim`` found for a messageId."""

    NEW = "new"
    IN_PROGRESS = "in progress"
    DUPLICATE = "duplicate"


class Deduplicator:
    """Remembers messageIds: at most ``max_entries``, each for ``ttl_seconds`` after done."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or ttl_seconds <= 0:
            raise ValueError("max_entries and ttl_seconds must be positive")
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # messageId -> expiry time, or None while in progress; oldest first.
        self._entries: OrderedDict[str, float | None] = OrderedDict()

    def claim(self, message_id: str) -> Claim:
        """Take ``message_id`` for processing if it is new; else say why not."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if message_id in self._entries:
                in_progress = self._entries[message_id] is None
                return Claim.IN_PROGRESS if in_progress else Claim.DUPLICATE
            self._entries[message_id] = None
            self._evict_overflow()
            return Claim.NEW

    def done(self, message_id: str) -> None:
        """``message_id`` is processed: later deliveries of it are duplicates."""
        with self._lock:
            self._entries.pop(message_id, None)
            self._entries[message_id] = self._clock() + self._ttl
            self._evict_overflow()

    def release(self, message_id: str) -> None:
        """Processing failed: forget ``message_id`` so that a retry is processed."""
        with self._lock:
            if message_id in self._entries and self._entries[message_id] is None:
                del self._entries[message_id]

    @contextmanager
    def process(self, message_id: str) -> Iterator[Claim]:
        """Claim, then mark done on success or release on an exception."""
        claim = self.claim(message_id)
        if claim is not Claim.NEW:
            yield claim
            return
        try:
            yield claim
        except BaseException:
            self.release(message_id)
            raise
        self.done(message_id)

    def __contains__(self, message_id: object) -> bool:
        with self._lock:
            self._expire(self._clock())
            return message_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    def _expire(self, now: float) -> None:
        # Done entries are appended in completion order and all live for the same ttl, so
        # the expired ones are at the front (in-progress entries have no expiry).
        expired = []
        for message_id, expiry in self._entries.items():
            if expiry is None:
                continue
            if expiry > now:
                break
            expired.append(message_id)
        for message_id in expired:
            del self._entries[message_id]

    def _evict_overflow(self) -> None:
        # The oldest go first, even one still in progress: past the bound, a rare duplicate
        # delivery is better than unbounded memory.
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
