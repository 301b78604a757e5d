"""The delivery store as the worker's loops reach it: calls off the event loop, and the
database's outages told once each, however many of those calls fail in between.

Shared by the claim loop and the attempt recorder, so that one outage makes one WARNING
and one line when it is over whichever of them notices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["InProcess", "Outage", "store_call"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class InProcess(Protocol):
    """A store that tells whether its calls run inside this process."""

    @property
    def in_process(self) -> bool: ...


async def store_call(store: InProcess, call: Callable[..., _T], /, **kwargs: Any) -> _T:
    """Runs `call`, a method of `store`: in a thread for a database server, here for SQLite.

    SQLite answers in well under a millisecond of CPU and a thread would only trade
    that for contention on the GIL with the HTTP work of this loop.
    """
    if store.in_process:
        return call(**kwargs)
    return await asyncio.to_thread(call, **kwargs)


class Outage:
    """The database as this worker last found it: one WARNING when it goes away and one
    line when it is back, however many calls fail in between.

    Calls run concurrently (the claim loop, the recorder, giving back): a call that began
    while the database was away can fail after another has already found it back. That
    failure belongs to the outage that just ended, not to a new one, so a caller passes
    `began` (from `began()`, taken before its call) and such a late failure is not told.
    Likewise a call that began before the outage was noticed can succeed after it (it
    reached the server before it went): that says nothing of the database now, so a
    success passes its `began` too and ends no outage that began after it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None
        self._ended_at: float | None = None

    def began(self) -> float:
        """The time to pass to `failed` for a call made now."""
        return self._clock()

    def failed(self, doing: str, *, began: float | None = None) -> None:
        if self._since is not None:
            return
        if began is not None and self._ended_at is not None and began < self._ended_at:
            log.debug("a call begun before the database came back failed while %s", doing)
            return
        self._since = self._clock()
        log.warning("database unavailable while %s; retrying with backoff until it is back", doing)

    def ended(self, *, began: float | None = None) -> None:
        if self._since is not None:
            if began is not None and began < self._since:
                log.debug("a call begun before the database went away succeeded")
                return
            now = self._clock()
            log.info("database available again after %.1fs", now - self._since)
            self._since = None
            self._ended_at = now
