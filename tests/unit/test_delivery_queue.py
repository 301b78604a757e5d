"""`DeliveryStore` keeps the `DeliveryQueue` contract, and that contract is all the
worker's recorder and its store calls ask for: mypy checks the assignments below."""

from __future__ import annotations

import sqlalchemy as sa

from dispatcher_service.delivery_queue import DeliveryQueue
from dispatcher_service.outage import InProcess
from dispatcher_service.recorder import AttemptStore
from dispatcher_service.store import DeliveryStore


def test_the_delivery_store_is_a_delivery_queue() -> None:
    engine = sa.create_engine("sqlite://")
    queue: DeliveryQueue = DeliveryStore(engine)
    recorded: AttemptStore = queue
    called: InProcess = queue
    assert recorded.in_process
    assert called.in_process
    engine.dispose()
