"""One WARNING per database outage, however many concurrent calls fail during it."""

from __future__ import annotations

import logging

import pytest

from dispatcher_service.outage import Outage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_one_warning_and_one_recovery_line_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = Outage(clock)
    with caplog.at_level(logging.INFO, logger="dispatcher_service.outage"):
        outage.failed("claiming deliveries", began=outage.began())
        outage.failed("recording attempts", began=outage.began())
        clock.now += 2.5
        outage.ended()
        outage.ended()
    assert warnings(caplog) == [
        "database unavailable while claiming deliveries; retrying with backoff until it is back"
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "database available again after 2.5s"
    ]


def test_a_call_begun_during_the_outage_that_fails_after_it_ended_is_not_a_new_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(clock)
    outage.failed("claiming deliveries", began=outage.began())
    slow_call = outage.began()  # e.g. the recorder's write, still waiting on the old server
    clock.now += 1
    outage.ended()  # the claim loop finds the database back
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dispatcher_service.outage"):
        outage.failed("recording attempts", began=slow_call)
    assert warnings(caplog) == []


def test_a_call_begun_after_the_outage_ended_that_fails_is_a_new_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(clock)
    outage.failed("claiming deliveries", began=outage.began())
    clock.now += 1
    outage.ended()
    clock.now += 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dispatcher_service.outage"):
        outage.failed("recording attempts", began=outage.began())
    assert len(warnings(caplog)) == 1


def test_a_failure_without_a_start_time_always_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = Outage(clock)
    outage.failed("claiming deliveries")
    clock.now += 1
    outage.ended()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dispatcher_service.outage"):
        outage.failed("giving back deliveries")
    assert len(warnings(caplog)) == 1


def test_a_call_begun_before_the_outage_that_succeeds_after_it_does_not_end_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(clock)
    early_claim = outage.began()  # e.g. a claim already answered by the server going down
    clock.now += 0.001
    with caplog.at_level(logging.INFO, logger="dispatcher_service.outage"):
        outage.failed("recording attempts", began=outage.began())
        outage.ended(began=early_claim)
        clock.now += 2
        outage.failed("claiming deliveries", began=outage.began())
        outage.ended(began=outage.began())
    assert warnings(caplog) == [
        "database unavailable while recording attempts; retrying with backoff until it is back"
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "database available again after 2.0s"
    ]
