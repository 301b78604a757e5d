"""The delivery worker on a real store, with fake routes and a fake sender."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.domain import DeliveryQuery, DeliveryState, PreparedEvent, Target
from dispatcher_service.retry import RetrySchedule
from dispatcher_service.routing import Route
from dispatcher_service.signing import KeyRing, SignatureAlgorithm
from dispatcher_service.store import DeliveryStore
from dispatcher_service.worker import DeliveryWorker, WorkerLimits


@dataclass(frozen=True)
class Sent:
    status_code: int | None = 200
    latency: float = 0.001
    error: str | None = None
    response_snippet: str = "ok"
    retry_after: str | None = None


class FakeSender:
    def __init__(self) -> None:
        self.urls: list[str] = []

    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> Sent:
        self.urls.append(url)
        return Sent()


class LateRoutes:
    """A routing table that is not loaded until the test says so."""

    def __init__(self) -> None:
        self.ready = False

    def is_ready(self) -> bool:
        return self.ready

    def route(self, subscription_id: str) -> Route | None:
        if not self.ready:
            return None
        return Route(
            subscription_id=subscription_id,
            tenant="acme",
            url="http://127.0.0.1:9/in",
            signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
            secret=None,
            enabled=True,
        )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'dispatcher.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


async def test_the_worker_waits_for_routes_instead_of_killing_early_deliveries(
    engine: Engine, tmp_path: Path
) -> None:
    store = DeliveryStore(engine)
    store.ingest(
        [
            PreparedEvent(
                tenant="acme",
                message_id="m1",
                message_type="event.claim.created.v1",
                payload='{"messageId":"m1"}',
                targets=(Target("s1", "http://127.0.0.1:9/in"),),
            )
        ],
        now=datetime.now(UTC),
    )
    routes, sender = LateRoutes(), FakeSender()

    async def never_disable(subscription_id: str, reason: str) -> None:
        raise AssertionError("nothing should be disabled")

    worker = DeliveryWorker(
        store=store,
        routes=routes,
        sender=sender,
        signer=KeyRing.open(tmp_path / "keys"),
        disable=never_disable,
        schedule=RetrySchedule.parse("0s"),
        disable_policy=None,
        limits=WorkerLimits(poll_interval=0.01, flush_interval=0.0),
        user_agent="test",
    )
    worker.start()
    try:
        await asyncio.sleep(0.2)  # many claim cycles while routes are missing
        (waiting,) = store.page(DeliveryQuery(tenant="acme", page_size=5), after=None)[0]
        assert waiting.state is DeliveryState.PENDING
        assert sender.urls == []
        routes.ready = True
        for _ in range(200):
            (delivery,) = store.page(DeliveryQuery(tenant="acme", page_size=5), after=None)[0]
            if delivery.state is DeliveryState.SUCCEEDED:
                break
            await asyncio.sleep(0.02)
        assert delivery.state is DeliveryState.SUCCEEDED
        assert sender.urls == ["http://127.0.0.1:9/in"]
    finally:
        await worker.stop(1)
