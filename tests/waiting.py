"""Waiting, in a test, for what other tasks are to make true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(check: Callable[[], object], *, within: float = 5.0) -> None:
    """Waits until `check()` is true; fails the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.005)
