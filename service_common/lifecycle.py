"""Process lifetime shared by both services: run until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal

__all__ = ["wait_for_shutdown_signal"]


async def wait_for_shutdown_signal() -> None:
    """Returns once the process receives SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
