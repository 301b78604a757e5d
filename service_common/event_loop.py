"""The event loop a service runs on: the standard library's (the default) or uvloop (libuv)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

import uvloop

__all__ = ["EventLoop", "run"]

EventLoop = Literal["asyncio", "uvloop"]
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, loop: EventLoop) -> T:
    """Runs `main` to its end on a new event loop of the kind `loop` names."""
    with asyncio.Runner(loop_factory=_factory(loop)) as runner:
        return runner.run(main)


def _factory(loop: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    return uvloop.new_event_loop if loop == "uvloop" else None
