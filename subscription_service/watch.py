"""Fan-out of committed changes to the open WatchSubscriptions streams of this process.

The change feed publishes every change of the change log here, in the log's order,
whichever replica made it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from service_common.errors import ResourceExhausted
from subscription_service.domain import Change

__all__ = ["ChangeHub", "Watcher"]


class _Closed:
    """Sentinel telling a watcher that the service is shutting down."""


class _Overflowed:
    """Sentinel telling a watcher it fell too far behind."""


class Watcher:
    def __init__(self, queue_size: int) -> None:
        # One slot more than the limit, so the overflow marker always fits.
        self._queue: asyncio.Queue[Change | _Closed | _Overflowed] = asyncio.Queue(queue_size + 1)
        self._limit = queue_size
        self._overflowed = False

    def offer(self, item: Change | _Closed) -> None:
        if self._overflowed:
            return
        if isinstance(item, Change) and self._queue.qsize() >= self._limit:
            self._overflowed = True
            self._queue.put_nowait(_Overflowed())
            return
        self._queue.put_nowait(item)

    async def changes(self) -> AsyncIterator[Change]:
        """The changes in the order they were committed; ends when the hub closes."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _Closed):
                return
            if isinstance(item, _Overflowed):
                raise ResourceExhausted("the watch fell too far behind; watch again to re-sync")
            yield item


class ChangeHub:
    def __init__(self, *, queue_size: int) -> None:
        self._queue_size = queue_size
        self._watchers: set[Watcher] = set()
        self._closed = False

    @contextmanager
    def watch(self) -> Iterator[Watcher]:
        watcher = Watcher(self._queue_size)
        if self._closed:
            watcher.offer(_Closed())
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    def publish(self, change: Change) -> None:
        for watcher in self._watchers:
            watcher.offer(change)

    def close(self) -> None:
        """Ends every watch stream (on shutdown) so the server can stop without waiting."""
        self._closed = True
        for watcher in self._watchers:
            watcher.offer(_Closed())

    def __len__(self) -> int:
        return len(self._watchers)
