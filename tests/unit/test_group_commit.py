"""Ingestion's group commit on a `MemoryQueue`: batches that arrive while one is being
written are stored together in the next write, and each caller gets its own outcomes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from dispatcher_service.domain import HandOff, Ingested, PreparedEvent, Target
from dispatcher_service.ingest import _GroupCommit
from dispatcher_service.memory_queue import MemoryQueue

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ENDPOINT = Target("sub_1", "https://hooks.example.com/in")


class HeldQueue(MemoryQueue):
    """Counts its writes; the first waits until `go_on` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []
        self.writing = threading.Event()
        self.go_on = threading.Event()

    def ingest(
        self, events: Sequence[PreparedEvent], *, now: datetime, hand_off: HandOff | None = None
    ) -> Ingested:
        self.writes.append(len(events))
        if len(self.writes) == 1:
            self.writing.set()
            assert self.go_on.wait(10)
        return super().ingest(events, now=now, hand_off=hand_off)


def event(message_id: str) -> PreparedEvent:
    return PreparedEvent(
        tenant="acme",
        message_id=message_id,
        message_type="event.claim.created.v1",
        payload="{}",
        targets=(ENDPOINT,),
    )


async def test_batches_that_arrive_during_a_write_are_stored_together_in_the_next() -> None:
    queue = HeldQueue()
    writer = _GroupCommit(queue)
    first = asyncio.create_task(writer.ingest([event("a")], now=NOW))
    await asyncio.to_thread(queue.writing.wait, 10)
    later = [
        asyncio.create_task(writer.ingest([event(m) for m in ids], now=NOW))
        for ids in (["b", "c"], ["a", "d"], ["d"])
    ]
    await asyncio.sleep(0.05)  # all three wait for the write in progress
    queue.go_on.set()
    answers = await asyncio.gather(first, *later)

    assert queue.writes == [1, 5]
    assert [[(o.message_id, o.duplicate) for o in answer] for answer in answers] == [
        [("a", False)],
        [("b", False), ("c", False)],
        [("a", True), ("d", False)],
        [("d", True)],  # the first of two equal message ids is the one stored
    ]
    assert [o.deliveries for answer in answers for o in answer] == [1, 1, 1, 0, 1, 0]


async def test_a_group_is_no_larger_than_its_limit() -> None:
    queue = HeldQueue()
    writer = _GroupCommit(queue, max_events=3)
    first = asyncio.create_task(writer.ingest([event("a")], now=NOW))
    await asyncio.to_thread(queue.writing.wait, 10)
    later = [
        asyncio.create_task(writer.ingest([event(f"{n}-{i}") for i in range(2)], now=NOW))
        for n in range(3)
    ]
    await asyncio.sleep(0.05)
    queue.go_on.set()
    await asyncio.gather(first, *later)

    # One batch never splits; the next waits for the following write.
    assert queue.writes == [1, 2, 2, 2]
