"""Process lifetime shared by both services: run until SIGINT or SIGTERM, and stop the
background tasks they start."""

from __future__ import annotations

import asyncio
import signal

__all__ = ["cancel_and_wait", "wait_for_shutdown_signal"]


async def wait_for_shutdown_signal() -> None:
    """Returns once the process receives SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancels a background task and waits until it has ended.

    Its CancelledError is ours and swallowed, unless the caller is itself being
    cancelled: then it goes on up, so a cancelled shutdown stays cancelled.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
