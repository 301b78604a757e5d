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
    line when it is back, however many calls fail in between."""

    def __init__(self) -> None:
        self._since: float | None = None

    def failed(self, doing: str) -> None:
        if self._since is None:
            self._since = time.monotonic()
            log.warning(
                "database unavailable while %s; retrying with backoff until it is back", doing
            )

    def ended(self) -> None:
        if self._since is not None:
            log.info("database available again after %.1fs", time.monotonic() - self._since)
            self._since = None
