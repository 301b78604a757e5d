"""De-duplication by messageId: once processed, later deliveries are duplicates; a failure
lets the retry through; memory stays bounded."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from webhook_receiver import Claim, Deduplicator


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail_while_processing(deduplicator: Deduplicator, message_id: str, seen: list[Claim]) -> None:
    with deduplicator.process(message_id) as claim:
        seen.append(claim)
        raise RuntimeError("the handler failed")


def test_a_processed_message_is_a_duplicate_afterwards() -> None:
    deduplicator = Deduplicator()
    assert deduplicator.claim("m1") is Claim.NEW
    deduplicator.done("m1")
    assert deduplicator.claim("m1") is Claim.DUPLICATE
    assert deduplicator.claim("m2") is Claim.NEW


def test_a_message_being_processed_is_reported_in_progress_not_duplicate() -> None:
    deduplicator = Deduplicator()
    assert deduplicator.claim("m1") is Claim.NEW
    assert deduplicator.claim("m1") is Claim.IN_PROGRESS


def test_a_failed_processing_lets_the_retry_be_processed() -> None:
    deduplicator = Deduplicator()
    seen: list[Claim] = []
    with pytest.raises(RuntimeError, match="handler failed"):
        fail_while_processing(deduplicator, "m1", seen)
    assert seen == [Claim.NEW]
    assert "m1" not in deduplicator
    with deduplicator.process("m1") as retry:
        assert retry is Claim.NEW
    with deduplicator.process("m1") as again:
        assert again is Claim.DUPLICATE


def test_a_duplicate_inside_process_is_not_released_by_an_exception() -> None:
    deduplicator = Deduplicator()
    with deduplicator.process("m1"):
        pass
    seen: list[Claim] = []
    with pytest.raises(RuntimeError, match="handler failed"):
        fail_while_processing(deduplicator, "m1", seen)
    assert seen == [Claim.DUPLICATE]
    assert deduplicator.claim("m1") is Claim.DUPLICATE


def test_processed_ids_are_forgotten_after_their_ttl() -> None:
    clock = FakeClock()
    deduplicator = Deduplicator(ttl_seconds=60, clock=clock)
    deduplicator.claim("old")
    deduplicator.done("old")
    clock.now += 30
    deduplicator.claim("young")
    deduplicator.done("young")
    clock.now += 31
    assert "old" not in deduplicator
    assert "young" in deduplicator
    assert deduplicator.claim("old") is Claim.NEW


def test_in_progress_ids_do_not_expire_with_the_ttl() -> None:
    clock = FakeClock()
    deduplicator = Deduplicator(ttl_seconds=1, clock=clock)
    deduplicator.claim("slow")
    clock.now += 3600
    assert deduplicator.claim("slow") is Claim.IN_PROGRESS


def test_memory_is_bounded_by_forgetting_the_oldest() -> None:
    deduplicator = Deduplicator(max_entries=3)
    for message_id in ("a", "b", "c", "d"):
        deduplicator.claim(message_id)
        deduplicator.done(message_id)
    assert len(deduplicator) == 3
    assert "a" not in deduplicator
    assert deduplicator.claim("d") is Claim.DUPLICATE


def test_only_one_of_many_concurrent_deliveries_of_a_message_is_processed() -> None:
    deduplicator = Deduplicator()
    start = threading.Barrier(8)

    def deliver(_: int) -> Claim:
        start.wait()
        return deduplicator.claim("same-message")

    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(pool.map(deliver, range(8)))
    assert claims.count(Claim.NEW) == 1
    assert claims.count(Claim.IN_PROGRESS) == 7


@pytest.mark.parametrize(("max_entries", "ttl"), [(0, 60.0), (10, 0.0)])
def test_bounds_must_be_positive(max_entries: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Deduplicator(max_entries=max_entries, ttl_seconds=ttl)
