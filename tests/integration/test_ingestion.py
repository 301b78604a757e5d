"""Ingestion on a real store: concurrent publishers share commits, each gets its own answer."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import pytest
from sqlalchemy.engine import Engine

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.domain import DeliveryQuery, HandOff, Ingested, IngestOutcome, PreparedEvent
from dispatcher_service.ingest import IncomingEvent, Ingestor, Rejected
from dispatcher_service.store import DeliveryStore
from service_common.auth import Caller, Scope
from service_common.errors import StoreUnavailable
from webhook_contracts import load_registry

PUBLISHER = Caller(tenant="acme", scopes=frozenset({Scope.PUBLISH}))
DETAILS = json.dumps(
    {
        "claimRef": "C-1",
        "receeveClaimRef": "R-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
)


@dataclass(frozen=True)
class _Route:
    subscription_id: str
    url: str


class OneSubscription:
    def is_ready(self) -> bool:
        return True

    def routes_for(self, tenant: str, message_type: str) -> Sequence[_Route]:
        return [_Route("sub-1", "https://hooks.example.com/in")]


class GatedStore(DeliveryStore):
    """A real store whose first write waits until the test opens the gate."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.writes: list[int] = []
        self.fail = False

    def ingest(
        self, events: Sequence[PreparedEvent], *, now: datetime, hand_off: HandOff | None = None
    ) -> Ingested:
        self.writes.append(len(events))
        self.entered.set()
        if len(self.writes) == 1:
            self.gate.wait(10)
        if self.fail:
            raise StoreUnavailable("the database is unavailable")
        return super().ingest(events, now=now, hand_off=hand_off)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def incoming(message_id: str) -> IncomingEvent:
    return IncomingEvent(
        tenant="",
        message_id=message_id,
        message_type="event.claim.created.v1",
        timestamp=None,
        details=DETAILS,
        user=None,
    )


def stored(outcome: IngestOutcome | Rejected) -> tuple[str, bool]:
    """(message id, duplicate) of an event that was not refused."""
    assert isinstance(outcome, IngestOutcome), outcome
    return outcome.message_id, outcome.duplicate


def ingestor(store: DeliveryStore) -> Ingestor:
    return Ingestor(store=store, registry=load_registry(), routes=OneSubscription())


async def test_batches_arriving_during_a_write_share_the_next_commit(engine: Engine) -> None:
    store = GatedStore(engine)
    ingest = ingestor(store)
    first = asyncio.create_task(ingest.publish(PUBLISHER, [incoming("m-0")]))
    assert await asyncio.to_thread(store.entered.wait, 10)
    later = [
        asyncio.create_task(ingest.publish(PUBLISHER, [incoming(f"m-{i}"), incoming("m-0")]))
        for i in range(1, 6)
    ]
    await asyncio.sleep(0.1)
    store.gate.set()
    answers = await asyncio.gather(first, *later)

    # The first write held the door; the five batches behind it went in one transaction.
    assert store.writes == [1, 10]
    assert [stored(o) for o in answers[0]] == [("m-0", False)]
    for i, answer in enumerate(answers[1:], start=1):
        assert [stored(o) for o in answer] == [
            (f"m-{i}", False),
            ("m-0", True),
        ]
    page, _ = store.page(DeliveryQuery(tenant="acme", page_size=50), after=None)
    assert sorted(d.message_id for d in page) == [f"m-{i}" for i in range(6)]


async def test_concurrent_publishers_of_one_message_id_store_it_once(engine: Engine) -> None:
    ingest = ingestor(DeliveryStore(engine))
    answers = await asyncio.gather(
        *(ingest.publish(PUBLISHER, [incoming("same")]) for _ in range(8))
    )
    assert sorted(stored(answer[0])[1] for answer in answers) == [False] + [True] * 7


async def test_a_failed_write_refuses_every_batch_it_held_and_acks_none(engine: Engine) -> None:
    store = GatedStore(engine)
    store.fail = True
    ingest = ingestor(store)
    calls = [asyncio.create_task(ingest.publish(PUBLISHER, [incoming(f"m-{i}")])) for i in range(3)]
    assert await asyncio.to_thread(store.entered.wait, 10)
    store.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    page, _ = store.page(DeliveryQuery(tenant="acme", page_size=50), after=None)
    assert page == []


async def test_an_invalid_event_is_refused_alone_while_its_batch_is_stored(
    engine: Engine,
) -> None:
    ingest = ingestor(DeliveryStore(engine))
    bad = IncomingEvent(
        tenant="",
        message_id="bad",
        message_type="event.claim.created.v1",
        timestamp=None,
        details=json.dumps({**json.loads(DETAILS), "amount": "lots"}),
        user=None,
    )
    answer = await ingest.publish(PUBLISHER, [incoming("good-1"), bad, incoming("good-2")])
    assert isinstance(answer[1], Rejected)
    assert [o.message_id for o in answer if isinstance(o, IngestOutcome)] == ["good-1", "good-2"]
