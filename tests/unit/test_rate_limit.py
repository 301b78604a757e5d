"""The per-tenant token buckets, on a fake monotonic clock."""

from __future__ import annotations

import pytest

from dispatcher_service.rate_limit import TenantRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter(
    clock: Clock, *, rate: float = 10.0, burst: int = 20, **kwargs: int
) -> TenantRateLimiter:
    return TenantRateLimiter(rate=rate, burst=burst, clock=clock, **kwargs)


def test_a_new_tenant_has_a_full_burst_then_waits_for_the_refill(clock: Clock) -> None:
    buckets = limiter(clock)
    assert buckets.acquire({"acme": 20}) is None
    assert buckets.acquire({"acme": 1}) == pytest.approx(0.1)
    clock.now += 0.1
    assert buckets.acquire({"acme": 1}) is None
    assert buckets.acquire({"acme": 5}) == pytest.approx(0.5)


def test_a_refused_call_takes_nothing(clock: Clock) -> None:
    buckets = limiter(clock)
    assert buckets.acquire({"acme": 15}) is None
    assert buckets.acquire({"acme": 10}) == pytest.approx(0.5)
    assert buckets.acquire({"acme": 5}) is None  # the refused 10 were not taken


def test_the_hinted_wait_is_enough(clock: Clock) -> None:
    buckets = limiter(clock, rate=3.0, burst=4)
    assert buckets.acquire({"acme": 4}) is None
    wait = buckets.acquire({"acme": 3})
    assert wait is not None
    clock.now += wait * 0.99
    assert buckets.acquire({"acme": 3}) is not None
    clock.now += wait * 0.01
    assert buckets.acquire({"acme": 3}) is None


def test_tenants_do_not_share_a_bucket(clock: Clock) -> None:
    buckets = limiter(clock)
    assert buckets.acquire({"acme": 20}) is None
    assert buckets.acquire({"acme": 1}) is not None
    assert buckets.acquire({"globex": 20}) is None


def test_a_call_for_several_tenants_is_all_or_nothing(clock: Clock) -> None:
    buckets = limiter(clock)
    assert buckets.acquire({"acme": 18}) is None
    assert buckets.acquire({"acme": 5, "globex": 5}) == pytest.approx(0.3)
    assert buckets.acquire({"globex": 20}) is None  # globex lost nothing to the refusal
    assert buckets.acquire({"acme": 2, "globex": 0}) is None


def test_the_bucket_never_holds_more_than_the_burst(clock: Clock) -> None:
    buckets = limiter(clock)
    assert buckets.acquire({"acme": 1}) is None
    clock.now += 3600
    assert buckets.acquire({"acme": 20}) is None
    assert buckets.acquire({"acme": 1}) is not None


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt(
    clock: Clock,
) -> None:
    buckets = limiter(clock, rate=10.0, burst=20)
    assert buckets.acquire({"acme": 1}) is None
    assert buckets.acquire({"acme": 50}) == pytest.approx(0.1)  # waits for a full bucket
    clock.now += 0.1
    assert buckets.acquire({"acme": 50}) is None
    # 30 tokens in debt: one event waits 3.1 s, so the average stays 10 events/s.
    assert buckets.acquire({"acme": 1}) == pytest.approx(3.1)


def test_full_buckets_of_idle_tenants_are_dropped(clock: Clock) -> None:
    buckets = limiter(clock, rate=10.0, burst=20)
    for number in range(50):
        assert buckets.acquire({f"tenant-{number}": 10}) is None
    assert len(buckets) == 50
    clock.now += 0.5  # half refilled: kept
    assert buckets.acquire({"other": 1}) is None
    assert len(buckets) == 51
    clock.now += 1.0  # every one of the 50 is full again
    assert buckets.acquire({"other": 1}) is None
    assert len(buckets) == 1
    assert buckets.acquire({"tenant-0": 20}) is None  # a dropped bucket is a full one


def test_memory_is_capped_by_max_tenants(clock: Clock) -> None:
    buckets = limiter(clock, rate=1.0, burst=10, max_tenants=3)
    for number in range(10):
        assert buckets.acquire({f"tenant-{number}": 10}) is None
        assert len(buckets) <= 3
    assert buckets.acquire({"tenant-9": 1}) is not None  # the most recent are kept


def test_the_clock_defaults_to_a_monotonic_one() -> None:
    buckets = TenantRateLimiter(rate=1000.0, burst=1)
    assert buckets.acquire({"acme": 1}) is None


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("inf"), 1), (float("nan"), 1), (1.0, 0)]
)
def test_nonsense_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        TenantRateLimiter(rate=rate, burst=burst)
