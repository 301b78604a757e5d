"""Retention at work, on SQLite and PostgreSQL: runs in bounded batches, counted and
logged; a running dispatcher pruning while it ingests and delivers; what clients see of
expunged and pruned events; and `python -m dispatcher_service.prune`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy.engine import Engine

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.domain import DeliveryState
from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.pruner import Pruner, PruneRun
from dispatcher_service.pruning import EventPruner
from dispatcher_service.retention import Pace, PrunedRows, RetentionPolicy
from dispatcher_service.server import RunningDispatcher
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.store import DeliveryStore
from tests.conftest import Tokens
from tests.integration.conftest import auth, publish, routed, scrape, value
from tests.integration.test_dispatcher import CLAIM_CREATED, claim_event, subscribe
from tests.integration.test_pruning import DELIVERIES, EVENTS, message_ids, seed
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(days=30, payload_days=7)
SUCCEEDED = DeliveryState.SUCCEEDED


def days_ago(days: float, now: datetime = NOW) -> datetime:
    return now - timedelta(days=days)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def pruner_of(engine: Engine, metrics: DispatcherMetrics, **limits: int) -> Pruner:
    return Pruner(
        pruner=EventPruner(engine),
        policy=POLICY,
        interval=60,
        batch_size=limits.get("batch_size", 3),
        max_batches=limits.get("max_batches", 1000),
        metrics=metrics,
        clock=lambda: NOW,
        # Batches of exactly `batch_size`, without pauses.
        pace=Pace(batch_seconds=3600, share=1.0),
    )


async def test_a_run_prunes_then_expunges_batch_after_batch_counting_and_logging(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    store = DeliveryStore(engine)
    for number in range(7):
        seed(store, engine, f"old-{number}", (SUCCEEDED, days_ago(40)), at=days_ago(40))
    for number in range(2):
        seed(store, engine, f"mid-{number}", (SUCCEEDED, days_ago(20)), at=days_ago(20))
    seed(store, engine, "due", (DeliveryState.RETRYING, days_ago(40)), at=days_ago(40))
    metrics = DispatcherMetrics()
    caplog.set_level(logging.INFO, logger="dispatcher_service.pruner")

    done = await pruner_of(engine, metrics).run_once()

    assert done is not None
    assert (done.pruned, done.expunged, done.ended) == (PrunedRows(7, 7, 7), 2, 0)
    assert message_ids(engine, EVENTS) == ["due", "mid-0", "mid-1"]
    for table in ("events", "deliveries", "attempts"):
        assert (
            metrics.registry.get_sample_value("webhooks_pruned_rows_total", {"table": table}) == 7
        )
    assert metrics.registry.get_sample_value("webhooks_payloads_expunged_total") == 2
    await pruner_of(engine, metrics).run_once()
    assert metrics.registry.get_sample_value("webhooks_payloads_expunged_total") == 2


async def test_a_run_stops_after_its_bound_and_the_next_goes_on(engine: Engine) -> None:
    store = DeliveryStore(engine)
    for number in range(7):
        seed(store, engine, f"old-{number}", (SUCCEEDED, days_ago(40)), at=days_ago(40))
    bounded = pruner_of(engine, DispatcherMetrics(), batch_size=2, max_batches=2)

    runs = [await bounded.run_once() for _ in range(3)]

    assert [run.pruned.events for run in runs if run is not None] == [4, 3, 0]


async def test_the_run_log_says_what_was_removed_at_info_and_nothing_at_debug(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    seed(DeliveryStore(engine), engine, "old", (SUCCEEDED, days_ago(40)), at=days_ago(40))
    pruner = pruner_of(engine, DispatcherMetrics())
    caplog.set_level(logging.DEBUG, logger="dispatcher_service.pruner")
    pruner.start()
    try:
        while not any("pruned" in r.message for r in caplog.records):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    finally:
        await pruner.stop()
    (record,) = [r for r in caplog.records if "pruned" in r.message]
    assert record.levelno == logging.INFO
    assert record.message.startswith(
        "pruned 1 events, 1 deliveries, 1 attempts older than 30 days; "
        "expunged 0 payloads older than 7 days in "
    )


@pytest.fixture
def dispatcher_settings(dispatcher_settings: DispatcherSettings) -> DispatcherSettings:
    return dispatcher_settings.model_copy(
        update={"prune_batch_size": 7, "payload_retention_days": 7.0}
    )


async def stop_pruning(dispatcher: RunningDispatcher) -> None:
    """Stops the runs of the dispatcher's pruner every interval (the first one, at start,
    may still be going on), so that the test's own runs do all the work."""
    assert dispatcher.pruner is not None
    await dispatcher.pruner.stop()


async def run_now(dispatcher: RunningDispatcher) -> PruneRun:
    """A run of the dispatcher's own pruner, by hand."""
    assert dispatcher.pruner is not None
    done = await dispatcher.pruner.run_once()
    assert done is not None
    return done


async def test_a_running_dispatcher_prunes_while_it_ingests_and_delivers(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/in"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await stop_pruning(dispatcher)
    store, now = DeliveryStore(dispatcher.engine), datetime.now(UTC)
    for number in range(60):
        at = days_ago(40, now)
        seed(store, dispatcher.engine, f"old-{number}", (SUCCEEDED, at), (SUCCEEDED, at), at=at)
    fresh = [f"new-{number}" for number in range(40)]

    async def publish_all() -> None:
        for start in range(0, len(fresh), 4):
            await publish(
                dispatcher_stub,
                tokens.acme_publisher,
                [claim_event(message_id) for message_id in fresh[start : start + 4]],
            )

    _, done = await asyncio.gather(publish_all(), run_now(dispatcher))

    assert done.pruned == PrunedRows(events=60, deliveries=120, attempts=120)
    received = await receiver.wait_for(len(fresh))
    assert len(received) == len(fresh)
    assert message_ids(dispatcher.engine, EVENTS) == sorted(fresh)
    samples = await scrape(dispatcher.metrics_port)
    assert value(samples, "webhooks_pruned_rows_total", table="events") == 60
    assert value(samples, "webhooks_pruned_rows_total", table="deliveries") == 120


async def test_an_expunged_event_is_refused_again_over_grpc_naming_why(
    dispatcher: RunningDispatcher, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    await stop_pruning(dispatcher)
    store, now = DeliveryStore(dispatcher.engine), datetime.now(UTC)
    seed(
        store,
        dispatcher.engine,
        "gone",
        (DeliveryState.DEAD, days_ago(20, now)),
        at=days_ago(20, now),
    )
    assert (await run_now(dispatcher)).expunged == 1

    for request in (
        pb.RedeliverEventRequest(message_id="gone"),
        pb.RedeliverEventRequest(subscription_id="s0", since=pb.Delivery().create_time),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await dispatcher_stub.RedeliverEvent(request, metadata=auth(tokens.acme_deliveries))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"was expunged on {now.date().isoformat()}" in (refused.value.details() or "")
        assert "cannot be delivered again" in (refused.value.details() or "")


async def test_a_message_id_published_again_after_its_event_was_pruned_is_new(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/in"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await stop_pruning(dispatcher)
    store, now = DeliveryStore(dispatcher.engine), datetime.now(UTC)
    seed(store, dispatcher.engine, "again", (SUCCEEDED, days_ago(40, now)), at=days_ago(40, now))
    Result = pb.PublishResult

    [[before]] = await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("again")])
    assert before.outcome == Result.OUTCOME_DUPLICATE
    assert (await run_now(dispatcher)).pruned.events == 1
    [[after]] = await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("again")])

    assert (after.outcome, after.deliveries) == (Result.OUTCOME_ACCEPTED, 1)
    (delivered,) = await receiver.wait_for(1)
    assert b'"messageId":"again"' in delivered.body
    assert message_ids(dispatcher.engine, DELIVERIES) == ["again"]


async def run_prune(env: dict[str, str], cwd: Path, *args: str) -> tuple[int | None, str, str]:
    """`python -m dispatcher_service.prune ARGS` with `env` added to a clean environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher_service.prune",
        *args,
        env={**clean, **env},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_prune_command_previews_then_prunes_and_expunges(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    store, now = DeliveryStore(engine), datetime.now(UTC)
    seed(store, engine, "old", (SUCCEEDED, days_ago(40, now)), at=days_ago(40, now))
    seed(store, engine, "mid", (SUCCEEDED, days_ago(20, now)), at=days_ago(20, now))
    env = {"DISPATCHER_DATABASE_URL": database_url, "DISPATCHER_PAYLOAD_RETENTION_DAYS": "7"}

    code, out, err = await run_prune(env, tmp_path, "--dry-run")
    assert code == 0, err
    assert "would prune 1 events, 1 deliveries, 1 attempts finished before" in out
    assert f"the oldest created {days_ago(40, now).date().isoformat()}" in out
    assert "would expunge 1 payloads" in out
    assert message_ids(engine, EVENTS) == ["mid", "old"]

    code, out, err = await run_prune(env, tmp_path)
    assert code == 0, err
    assert "pruned 1 events, 1 deliveries, 1 attempts older than 30 days; " in out
    assert "expunged 1 payloads older than 7 days" in out
    assert message_ids(engine, EVENTS) == ["mid"]


async def test_the_prune_command_refuses_bad_settings_and_names_a_database_error(
    tmp_path: Path,
) -> None:
    code, _, err = await run_prune(
        {"DISPATCHER_RETENTION_DAYS": "5", "DISPATCHER_PAYLOAD_RETENTION_DAYS": "9"}, tmp_path
    )
    assert code == 2
    assert "DISPATCHER_PAYLOAD_RETENTION_DAYS (9) must not exceed" in err
    # A database never migrated has no tables to prune.
    empty = {"DISPATCHER_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    code, _, err = await run_prune(empty, tmp_path, "--dry-run")
    assert code == 1
    assert "cannot prune the dispatcher database" in err
    assert "no such table" in err
