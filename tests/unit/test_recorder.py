"""The attempt recorder: batches, retries through a database outage, and auto-disable,
on a fake store and a fake subscription service."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher_service import recorder
from dispatcher_service.activity import ActivityWindow
from dispatcher_service.domain import Attempt, Completion, DeliveryState, EndpointHealth
from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.outage import Outage
from dispatcher_service.recorder import AttemptRecorder
from dispatcher_service.retry import DisablePolicy
from dispatcher_service.routing import Route
from dispatcher_service.signing import SignatureAlgorithm
from service_common.errors import StoreUnavailable
from tests import waiting

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# Longer than any test takes: a batch recorded before it ran out was recorded at once.
LONG = 30.0


class FakeStore:
    """Records batches of delivery ids, after raising `StoreUnavailable` `failures` times;
    every batch reports `failing` as endpoints that failed."""

    in_process = True

    def __init__(self, *, failures: int = 0, failing: Sequence[EndpointHealth] = ()) -> None:
        self.failures = failures
        self.failing = list(failing)
        self.calls = 0
        self.batches: list[list[str]] = []
        self.forgotten: list[str] = []

    def complete(
        self, completions: Sequence[Completion], *, owner: str, now: datetime
    ) -> list[EndpointHealth]:
        assert owner == "worker-test"
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("the database is unavailable")
        self.batches.append([completion.delivery_id for completion in completions])
        return self.failing

    def forget_endpoint(self, *, subscription_id: str) -> None:
        self.forgotten.append(subscription_id)


class FakeDisabler:
    """The subscription service's side of a disable: who was disabled, and why."""

    def __init__(self, *, error: Exception | None = None) -> None:
        self.error = error
        self.disabled: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, subscription_id: str, reason: str) -> None:
        await self.release.wait()
        if self.error is not None:
            raise self.error
        self.disabled.append((subscription_id, reason))


def route(subscription_id: str, *, enabled: bool = True) -> Route:
    return Route(
        subscription_id=subscription_id,
        tenant="acme",
        url="https://hooks.example/in",
        signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
        secret=None,
        enabled=enabled,
    )


def completion(
    delivery_id: str, state: DeliveryState = DeliveryState.SUCCEEDED, *, tenant: str = "acme"
) -> Completion:
    return Completion(
        delivery_id=delivery_id,
        tenant=tenant,
        subscription_id="s1",
        attempt=Attempt(
            number=1,
            start_time=NOW,
            status_code=200 if state is DeliveryState.SUCCEEDED else 500,
            latency_ms=1,
            error="",
            response_snippet="",
        ),
        state=state,
        next_attempt_time=NOW + timedelta(seconds=5) if state is DeliveryState.RETRYING else None,
        endpoint_failed=state is not DeliveryState.SUCCEEDED,
    )


def new_recorder(
    store: FakeStore,
    *,
    disable: FakeDisabler | None = None,
    policy: DisablePolicy | None = None,
    routes: dict[str, Route] | None = None,
    flush_interval: float = LONG,
    flush_batch: int = 100,
    metrics: DispatcherMetrics | None = None,
    activity: ActivityWindow | None = None,
) -> AttemptRecorder:
    known = {"s1": route("s1")} if routes is None else routes
    return AttemptRecorder(
        store=store,
        owner="worker-test",
        route=known.get,
        disable=disable or FakeDisabler(),
        disable_policy=policy,
        flush_interval=flush_interval,
        flush_batch=flush_batch,
        clock=lambda: NOW,
        metrics=metrics or DispatcherMetrics(),
        activity=activity or ActivityWindow(),
        outage=Outage(),
    )


def recorded(metrics: DispatcherMetrics, state: DeliveryState) -> float | None:
    return metrics.registry.get_sample_value("webhooks_deliveries_total", {"outcome": state.value})


def disabled(metrics: DispatcherMetrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value(
        "webhooks_subscriptions_disabled_total", {"reason": kind}
    )


# Recording is quick: a recorder that takes longer than this is stuck.
until = functools.partial(waiting.until, within=2.0)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after 10 ms, then 20, 40, ... up to 80 ms."""
    monkeypatch.setattr(recorder, "FIRST_RECORD_DELAY_SECONDS", 0.01)
    monkeypatch.setattr(recorder, "MAX_RECORD_DELAY_SECONDS", 0.08)


async def running(attempts: AttemptRecorder) -> asyncio.Task[None]:
    task = asyncio.create_task(attempts.run())
    await asyncio.sleep(0)  # waiting for the first result
    return task


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_results_that_arrive_within_the_window_are_recorded_in_one_batch() -> None:
    store = FakeStore()
    attempts = new_recorder(store, flush_interval=0.2)
    task = await running(attempts)
    try:
        attempts.put(completion("d1"))
        await asyncio.sleep(0.02)
        attempts.put(completion("d2"))
        await asyncio.sleep(0.02)
        assert store.batches == []  # the window is still open
        await until(lambda: len(store.batches) == 1)
        attempts.put(completion("d3"))
        await until(lambda: len(store.batches) == 2)
    finally:
        await stopped(task)

    assert store.batches == [["d1", "d2"], ["d3"]]


async def test_a_full_batch_is_recorded_at_once() -> None:
    store = FakeStore()
    attempts = new_recorder(store, flush_interval=LONG, flush_batch=3)
    task = await running(attempts)
    try:
        for name in ("d1", "d2", "d3", "d4"):
            attempts.put(completion(name))
        await until(lambda: len(store.batches) == 1)
        await asyncio.sleep(0.05)
    finally:
        await stopped(task)

    # The fourth waits for more, or for the window to close.
    assert store.batches == [["d1", "d2", "d3"]]


async def test_a_batch_filling_up_while_the_window_is_open_is_recorded_at_once() -> None:
    store = FakeStore()
    attempts = new_recorder(store, flush_interval=LONG, flush_batch=3)
    task = await running(attempts)
    try:
        attempts.put(completion("d1"))
        await asyncio.sleep(0.02)  # taken: the window opens
        # The window closes once `flush_batch` results wait, the one taken included.
        for name in ("d2", "d3"):
            attempts.put(completion(name))
        await until(lambda: len(store.batches) == 1)
    finally:
        await stopped(task)

    assert store.batches == [["d1", "d2", "d3"]]


async def test_a_recorder_cancelled_as_its_batch_fills_up_stops() -> None:
    store = FakeStore()
    attempts = new_recorder(store, flush_interval=LONG, flush_batch=3)
    task = await running(attempts)
    attempts.put(completion("d1"))
    await asyncio.sleep(0.02)  # taken: the window opens
    # The batch fills up and the recorder is cancelled in the same turn of the loop.
    attempts.put(completion("d2"))
    attempts.put(completion("d3"))
    task.cancel()

    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task}
    assert task.cancelled()


async def test_recorded_attempts_are_counted_by_the_state_they_left() -> None:
    metrics = DispatcherMetrics()
    attempts = new_recorder(FakeStore(), metrics=metrics)
    attempts.put(completion("d1"))
    attempts.put(completion("d2"))
    attempts.put(completion("d3", DeliveryState.RETRYING))
    attempts.put(completion("d4", DeliveryState.DEAD))

    await attempts.flush_all(give_up_at=time.monotonic() + LONG)

    assert recorded(metrics, DeliveryState.SUCCEEDED) == 2
    assert recorded(metrics, DeliveryState.RETRYING) == 1
    assert recorded(metrics, DeliveryState.DEAD) == 1


async def test_recorded_attempts_are_counted_by_tenant_in_the_second_of_the_clock() -> None:
    window = ActivityWindow()
    attempts = new_recorder(FakeStore(), activity=window)
    attempts.put(completion("d1"))
    attempts.put(completion("d2", DeliveryState.RETRYING))
    attempts.put(completion("d3", DeliveryState.DEAD, tenant="globex"))
    attempts.count(DeliveryState.RETRYING, "globex")  # as a claim counts one cut short

    await attempts.flush_all(give_up_at=time.monotonic() + LONG)

    def last_second(tenant: str | None) -> tuple[int, int, int]:
        last = window.seconds(tenant, NOW)[-1]
        return last.succeeded, last.retrying, last.dead

    assert last_second("acme") == (1, 1, 0)
    assert last_second("globex") == (0, 1, 1)
    assert last_second(None) == (1, 2, 1)


@pytest.mark.usefixtures("quick_retries")
async def test_recording_is_tried_again_while_the_database_is_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, metrics = FakeStore(failures=5), DispatcherMetrics()
    attempts = new_recorder(store, flush_interval=0.0, metrics=metrics)
    task = await running(attempts)
    try:
        with caplog.at_level(logging.INFO, logger="dispatcher_service"):
            attempts.put(completion("d1"))
            await until(lambda: store.batches != [])
    finally:
        await stopped(task)

    assert store.calls == 6
    assert store.batches == [["d1"]]
    assert recorded(metrics, DeliveryState.SUCCEEDED) == 1
    assert caplog.text.count("database unavailable while recording attempts") == 1
    assert caplog.text.count("database available again") == 1


@pytest.mark.usefixtures("quick_retries")
async def test_recording_gives_up_at_the_time_given(caplog: pytest.LogCaptureFixture) -> None:
    store, metrics = FakeStore(failures=1_000_000), DispatcherMetrics()
    attempts = new_recorder(store, metrics=metrics)
    attempts.put(completion("d1"))
    attempts.put(completion("d2"))
    give_up_at = time.monotonic() + 0.2

    with caplog.at_level(logging.WARNING, logger="dispatcher_service"):
        await asyncio.wait_for(attempts.flush_all(give_up_at=give_up_at), 5)

    assert time.monotonic() < give_up_at + 0.1  # no wait past it
    assert store.calls >= 3  # tried again in between
    assert store.batches == []
    assert recorded(metrics, DeliveryState.SUCCEEDED) == 0
    assert "2 attempts not recorded" in caplog.text


def failing_since(hours: float, failures: int = 12) -> EndpointHealth:
    return EndpointHealth(
        subscription_id="s1",
        consecutive_failures=failures,
        first_failure_time=NOW - timedelta(hours=hours),
    )


POLICY = DisablePolicy(consecutive_failures=10, min_failing_seconds=3600)


async def test_a_subscription_is_disabled_when_the_policy_says_so() -> None:
    store, disabler, metrics = (
        FakeStore(failing=[failing_since(2)]),
        FakeDisabler(),
        DispatcherMetrics(),
    )
    attempts = new_recorder(store, disable=disabler, policy=POLICY, metrics=metrics)
    attempts.put(completion("d1", DeliveryState.RETRYING))

    await attempts.flush_all(give_up_at=time.monotonic() + LONG)

    since = (NOW - timedelta(hours=2)).isoformat(timespec="seconds")
    assert disabler.disabled == [("s1", f"12 failed attempts in a row since {since}")]
    assert disabled(metrics, "failing") == 1
    # Enabled again, its endpoint starts from a clean count.
    assert store.forgotten == ["s1"]


@pytest.mark.parametrize(
    ("health", "policy", "routes"),
    [
        pytest.param(failing_since(0.5), POLICY, None, id="not-failing-long-enough"),
        pytest.param(failing_since(2, failures=9), POLICY, None, id="too-few-failures"),
        pytest.param(failing_since(2), None, None, id="no-policy"),
        pytest.param(failing_since(2), POLICY, {"s1": route("s1", enabled=False)}, id="disabled"),
        pytest.param(failing_since(2), POLICY, {}, id="deleted"),
    ],
)
async def test_a_subscription_is_left_alone_unless_the_policy_says_so(
    health: EndpointHealth, policy: DisablePolicy | None, routes: dict[str, Route] | None
) -> None:
    store, disabler, metrics = FakeStore(failing=[health]), FakeDisabler(), DispatcherMetrics()
    attempts = new_recorder(store, disable=disabler, policy=policy, routes=routes, metrics=metrics)
    attempts.put(completion("d1", DeliveryState.RETRYING))

    await attempts.flush_all(give_up_at=time.monotonic() + LONG)

    assert store.batches == [["d1"]]
    assert disabler.disabled == []
    assert store.forgotten == []
    assert disabled(metrics, "failing") == 0


async def test_answers_that_agree_at_once_disable_a_subscription_once() -> None:
    store, disabler, metrics = FakeStore(), FakeDisabler(), DispatcherMetrics()
    disabler.release.clear()
    attempts = new_recorder(store, disable=disabler, metrics=metrics)

    first = asyncio.create_task(attempts.disable_quietly("s1", "gone", kind="gone"))
    await asyncio.sleep(0)  # now disabling
    await asyncio.wait_for(attempts.disable_quietly("s1", "gone", kind="gone"), 1)
    disabler.release.set()
    await asyncio.wait_for(first, 1)

    assert disabler.disabled == [("s1", "gone")]
    assert disabled(metrics, "gone") == 1
    assert store.forgotten == ["s1"]


async def test_a_disable_that_fails_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    store, metrics = FakeStore(), DispatcherMetrics()
    attempts = new_recorder(
        store, disable=FakeDisabler(error=RuntimeError("unreachable")), metrics=metrics
    )

    with caplog.at_level(logging.ERROR, logger="dispatcher_service"):
        await attempts.disable_quietly("s1", "the endpoint answered 410 Gone", kind="gone")

    assert "could not disable subscription s1" in caplog.text
    assert disabled(metrics, "gone") == 0
    assert store.forgotten == []
