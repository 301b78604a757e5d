"""libcurl's multi interface, run on a thread of its own for the asyncio loop that owns it.

The loop hands prepared easy handles over with `MultiDriver.submit` (a queue and one
wake-up byte); the thread waits on curl's sockets with epoll (`selectors`), the GIL
released, and hands finished transfers back to the loop in one call per wake-up,
however many finished. Only this thread touches the multi handle; a transfer's easy
handle belongs to it from `submit` until its `finish` runs on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import selectors
import socket
import threading
import time
from typing import Protocol

import pycurl

__all__ = ["MultiDriver", "Outcome", "Transfer"]

# curl's result code (0 for success) and its message.
Outcome = tuple[int, str]

_SELECT_TO_CURL = {
    selectors.EVENT_READ: pycurl.CSELECT_IN,
    selectors.EVENT_WRITE: pycurl.CSELECT_OUT,
}
_CURL_TO_SELECT = {
    pycurl.POLL_IN: selectors.EVENT_READ,
    pycurl.POLL_OUT: selectors.EVENT_WRITE,
    pycurl.POLL_INOUT: selectors.EVENT_READ | selectors.EVENT_WRITE,
}


class Transfer(Protocol):
    @property
    def curl(self) -> pycurl.Curl: ...

    def finish(self, outcome: Outcome) -> None:
        """Called on the loop once curl is done with the handle."""


class MultiDriver:
    """Drives every transfer of one sender; `aclose` ends those still running."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, per_host_limit: int, total_limit: int
    ) -> None:
        if per_host_limit < 1 or total_limit < 1:
            raise ValueError("connection limits must be at least 1")
        self._loop = loop
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, per_host_limit)
        self._multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, total_limit)
        self._multi.setopt(pycurl.M_MAXCONNECTS, total_limit)
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ)
        self._incoming: collections.deque[Transfer] = collections.deque()
        self._running: dict[pycurl.Curl, Transfer] = {}
        self._woken = False
        self._closing = False
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="curl-sender", daemon=True)
        self._thread.start()

    def submit(self, transfer: Transfer) -> None:
        """Starts the prepared transfer; its `finish` is called on the loop when it ends."""
        if self._closing:
            transfer.finish((pycurl.E_ABORTED_BY_CALLBACK, "the sender is closed"))
            return
        self._incoming.append(transfer)
        self._wake()

    async def aclose(self) -> None:
        self._closing = True
        self._wake()
        await asyncio.to_thread(self._thread.join)
        self._multi.close()
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()

    def _wake(self) -> None:
        # The thread clears the flag before it drains the queue, so a transfer queued
        # while the flag is set is always seen.
        if not self._woken:
            self._woken = True
            self._wake_out.send(b"\0")

    # --- the driver thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing:
            for key, mask in self._selector.select(self._timeout()):
                if key.fileobj is self._wake_in:
                    self._take_incoming()
                else:
                    self._act(key.fd, mask)
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._deadline = None
                self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
            self._hand_back(self._finished())
        self._take_incoming()
        closed = (pycurl.E_ABORTED_BY_CALLBACK, "the sender closed")
        self._hand_back([(curl, closed) for curl in list(self._running)])

    def _timeout(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _take_incoming(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_in.recv(4096)
        self._woken = False
        while self._incoming:
            transfer = self._incoming.popleft()
            self._running[transfer.curl] = transfer
            self._multi.add_handle(transfer.curl)

    def _act(self, fd: int, mask: int) -> None:
        flags = 0
        for event, flag in _SELECT_TO_CURL.items():
            if mask & event:
                flags |= flag
        self._multi.socket_action(fd, flags)

    def _finished(self) -> list[tuple[pycurl.Curl, Outcome]]:
        done: list[tuple[pycurl.Curl, Outcome]] = []
        while True:
            queued, succeeded, failed = self._multi.info_read()
            done += [(curl, (0, "")) for curl in succeeded]
            done += [(curl, (code, message)) for curl, code, message in failed]
            if not queued:
                return done

    def _hand_back(self, done: list[tuple[pycurl.Curl, Outcome]]) -> None:
        if not done:
            return
        finished = []
        for curl, outcome in done:
            self._multi.remove_handle(curl)
            finished.append((self._running.pop(curl), outcome))
        self._loop.call_soon_threadsafe(_settle, finished)

    def _on_socket(self, what: int, fd: int, _multi: object, _data: object) -> None:
        if what == pycurl.POLL_REMOVE:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            return
        events = _CURL_TO_SELECT[what]
        try:
            self._selector.modify(fd, events)
        except KeyError:
            self._selector.register(fd, events)

    def _on_timer(self, timeout_ms: int) -> None:
        self._deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000


def _settle(finished: list[tuple[Transfer, Outcome]]) -> None:
    for transfer, outcome in finished:
        transfer.finish(outcome)
