"""The retry schedule, Retry-After, attempt outcomes and the auto-disable rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatcher_service.domain import INTERRUPTED_ERROR, Attempt, Completion, DeliveryState
from dispatcher_service.retry import (
    DEFAULT_DELAYS,
    AttemptOutcome,
    DisablePolicy,
    EndpointRun,
    RetrySchedule,
    after_interruption,
    classify,
    endpoint_runs,
    next_attempt_delay,
    parse_duration,
    parse_retry_after,
    should_disable,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NO_JITTER = RetrySchedule(jitter=0.0)


def delay(
    schedule: RetrySchedule,
    attempts_made: int,
    *,
    retry_after: float | None = None,
    random: float = 0.5,
) -> float | None:
    return next_attempt_delay(
        schedule, attempts_made=attempts_made, retry_after=retry_after, random=lambda: random
    )


# --- the schedule ----------------------------------------------------------------------


def test_default_schedule_is_immediately_then_seconds_minutes_hours() -> None:
    assert RetrySchedule().delays == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def test_default_schedule_lasts_about_a_day() -> None:
    assert 24 * 3600 <= RetrySchedule().total_seconds <= 30 * 3600


def test_schedule_parses_the_configuration_format() -> None:
    parsed = RetrySchedule.parse("0s,5s,5m,30m,2h,5h,10h,10h")
    assert parsed.delays == DEFAULT_DELAYS


def test_schedule_parse_accepts_spaces_bare_seconds_fractions_and_days() -> None:
    parsed = RetrySchedule.parse(" 0, 1.5s ,250ms, 1d ", jitter=0.1, retry_after_cap=60)
    assert parsed.delays == (0.0, 1.5, 0.25, 86400.0)
    assert parsed.jitter == 0.1
    assert parsed.retry_after_cap == 60


@pytest.mark.parametrize("text", ["", " , ", "5x", "-5s", "5 s", "1e3", "five", "nan", "\u0665s"])
def test_schedule_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|1 to"):
        RetrySchedule.parse(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delays": ()},
        {"delays": (1.0, -1.0)},
        {"delays": (float("inf"),)},
        {"delays": (float("nan"),)},
        {"delays": (1.0,) * 101},
        {"jitter": -0.1},
        {"jitter": 1.0},
        {"retry_after_cap": -1.0},
        {"retry_after_cap": float("inf")},
    ],
)
def test_schedule_rejects_impossible_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        RetrySchedule(**kwargs)  # type: ignore[arg-type]


def test_parse_duration_units() -> None:
    assert [parse_duration(t) for t in ("7", "7s", "2m", "3h", "1d", "500ms")] == [
        7.0,
        7.0,
        120.0,
        10800.0,
        86400.0,
        0.5,
    ]


# --- next_attempt_delay ----------------------------------------------------------------


def test_first_attempt_is_immediate() -> None:
    assert delay(RetrySchedule(), 0) == 0.0


def test_each_failure_waits_the_next_delay_of_the_schedule() -> None:
    waits = [delay(NO_JITTER, n) for n in range(len(DEFAULT_DELAYS))]
    assert waits == [float(d) for d in DEFAULT_DELAYS]


def test_delivery_is_dead_after_the_last_attempt() -> None:
    assert delay(NO_JITTER, len(DEFAULT_DELAYS)) is None
    assert delay(NO_JITTER, len(DEFAULT_DELAYS) + 5) is None


def test_dead_stays_dead_whatever_retry_after_says() -> None:
    assert delay(NO_JITTER, len(DEFAULT_DELAYS), retry_after=1.0) is None


def test_jitter_spreads_the_delay_over_plus_minus_the_fraction() -> None:
    schedule = RetrySchedule(delays=(0, 100), jitter=0.2)
    assert delay(schedule, 1, random=0.0) == pytest.approx(80.0)
    assert delay(schedule, 1, random=0.5) == pytest.approx(100.0)
    assert delay(schedule, 1, random=0.999999) == pytest.approx(120.0, abs=1e-3)


def test_jitter_uses_the_injected_random_source_once_per_call() -> None:
    calls: list[None] = []

    def counting() -> float:
        calls.append(None)
        return 0.25

    result = next_attempt_delay(
        RetrySchedule(delays=(0, 100), jitter=0.2),
        attempts_made=1,
        retry_after=None,
        random=counting,
    )
    assert result == pytest.approx(90.0)
    assert len(calls) == 1


def test_retry_after_longer_than_the_schedule_wins() -> None:
    assert delay(NO_JITTER, 1, retry_after=120.0) == 120.0


def test_retry_after_shorter_than_the_schedule_does_not_shorten_it() -> None:
    assert delay(NO_JITTER, 2, retry_after=10.0) == 300.0


def test_retry_after_is_capped() -> None:
    schedule = RetrySchedule(jitter=0.0, retry_after_cap=600.0)
    assert delay(schedule, 1, retry_after=86400.0) == 600.0


def test_cap_never_shortens_the_schedule_itself() -> None:
    schedule = RetrySchedule(jitter=0.0, retry_after_cap=600.0)
    assert delay(schedule, 6, retry_after=86400.0) == 36000.0


def test_retry_after_is_not_jittered_below_what_the_receiver_asked() -> None:
    schedule = RetrySchedule(delays=(0, 5), jitter=0.5)
    assert delay(schedule, 1, retry_after=60.0, random=0.0) == 60.0


@pytest.mark.parametrize("retry_after", [-1.0, float("nan"), float("inf")])
def test_next_attempt_delay_rejects_an_impossible_retry_after(retry_after: float) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        delay(NO_JITTER, 1, retry_after=retry_after)


def test_next_attempt_delay_rejects_negative_attempt_counts() -> None:
    with pytest.raises(ValueError, match="attempts_made"):
        delay(NO_JITTER, -1)


# --- after_interruption ----------------------------------------------------------------


def test_an_interrupted_attempt_is_followed_by_the_next_while_the_schedule_has_one() -> None:
    schedule = RetrySchedule()  # 8 attempts
    states = [after_interruption(number=n, max_attempts=schedule.max_attempts) for n in range(1, 9)]
    assert states == [DeliveryState.RETRYING] * 7 + [DeliveryState.DEAD]


def test_an_interruption_ends_a_delivery_exactly_where_a_failed_attempt_would() -> None:
    schedule = RetrySchedule(delays=(0, 5, 300), jitter=0.0)
    for number in range(1, 6):
        failed_ends = delay(schedule, number) is None
        interrupted = after_interruption(number=number, max_attempts=schedule.max_attempts)
        assert (interrupted is DeliveryState.DEAD) is failed_ends, number


def test_an_interrupted_redelivery_of_a_dead_delivery_ends_it_again() -> None:
    assert after_interruption(number=9, max_attempts=8) is DeliveryState.DEAD


@pytest.mark.parametrize(("number", "max_attempts"), [(0, 8), (1, 0)])
def test_after_interruption_rejects_impossible_numbers(number: int, max_attempts: int) -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        after_interruption(number=number, max_attempts=max_attempts)


def test_an_interrupted_attempt_has_no_answer_and_says_so_in_its_error() -> None:
    attempt = Attempt.interrupted_at(number=3, claim_time=NOW)
    assert (attempt.number, attempt.start_time, attempt.status_code) == (3, NOW, 0)
    assert attempt.error == INTERRUPTED_ERROR
    assert attempt.error.startswith("interrupted: ")
    assert attempt.interrupted


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (0, "timeout: no answer in 15s"),
        (500, ""),
        (0, "connection refused"),
        (502, "interrupted: x"),
    ],
)
def test_answers_and_other_failures_are_not_interrupted(status: int, error: str) -> None:
    attempt = Attempt(
        number=1, start_time=NOW, status_code=status, latency_ms=5, error=error, response_snippet=""
    )
    assert not attempt.interrupted


# --- parse_retry_after -----------------------------------------------------------------


@pytest.mark.parametrize(("header", "seconds"), [("120", 120.0), (" 0 ", 0.0), ("007", 7.0)])
def test_retry_after_delta_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    "header",
    [
        "Sun, 01 Mar 2026 12:01:30 GMT",  # IMF-fixdate
        "Sunday, 01-Mar-26 12:01:30 GMT",  # obsolete RFC 850
        "Sun Mar  1 12:01:30 2026",  # obsolete asctime, implicitly GMT
    ],
)
def test_retry_after_http_date_in_each_of_its_forms(header: str) -> None:
    assert parse_retry_after(header, now=NOW) == 90.0


def test_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now=NOW) == 0.0


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "soon",
        "-5",
        "1.5",
        "5 minutes",
        "0x10",
        "1" * 40,
        "2026-03-01T12:00:00Z",
        "\u0663",
    ],
)
def test_retry_after_garbage_and_negative_values_are_ignored(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


# --- classify --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    assert classify(status, None) is AttemptOutcome.SUCCESS


def test_2xx_is_success_even_when_reading_the_body_failed() -> None:
    assert classify(200, "reading the response: timeout") is AttemptOutcome.SUCCESS


def test_410_gone_disables_the_endpoint() -> None:
    assert classify(410, None) is AttemptOutcome.DISABLE


@pytest.mark.parametrize(
    "status", [100, 199, 300, 301, 302, 304, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503]
)
def test_every_other_status_is_retried(status: int) -> None:
    assert classify(status, None) is AttemptOutcome.RETRY


@pytest.mark.parametrize(
    "error", ["timeout: no response within 15s", "connection error: refused", "target refused: x"]
)
def test_no_response_is_retried(error: str) -> None:
    assert classify(None, error) is AttemptOutcome.RETRY


def test_an_attempt_with_neither_status_nor_error_is_a_bug() -> None:
    with pytest.raises(ValueError, match="error"):
        classify(None, None)


# --- should_disable --------------------------------------------------------------------

POLICY = DisablePolicy(consecutive_failures=5, min_failing_seconds=3600.0)


def test_disable_needs_both_enough_failures_and_enough_time() -> None:
    long_ago = NOW - timedelta(hours=2)
    assert should_disable(POLICY, consecutive_failures=5, first_failure_at=long_ago, now=NOW)


def test_many_failures_in_a_short_outage_do_not_disable() -> None:
    recently = NOW - timedelta(minutes=5)
    assert not should_disable(POLICY, consecutive_failures=500, first_failure_at=recently, now=NOW)


def test_few_failures_over_a_long_time_do_not_disable() -> None:
    long_ago = NOW - timedelta(days=30)
    assert not should_disable(POLICY, consecutive_failures=4, first_failure_at=long_ago, now=NOW)


def test_thresholds_are_inclusive() -> None:
    exactly = NOW - timedelta(seconds=3600)
    assert should_disable(POLICY, consecutive_failures=5, first_failure_at=exactly, now=NOW)
    just_short = NOW - timedelta(seconds=3599)
    assert not should_disable(POLICY, consecutive_failures=5, first_failure_at=just_short, now=NOW)


def test_no_failure_run_never_disables() -> None:
    assert not should_disable(POLICY, consecutive_failures=50, first_failure_at=None, now=NOW)


def test_default_disable_policy_waits_days_not_hours() -> None:
    policy = DisablePolicy()
    four_days_ago = NOW - timedelta(days=4)
    six_days_ago = NOW - timedelta(days=6)
    failures = policy.consecutive_failures
    assert not should_disable(
        policy, consecutive_failures=failures, first_failure_at=four_days_ago, now=NOW
    )
    assert should_disable(
        policy, consecutive_failures=failures, first_failure_at=six_days_ago, now=NOW
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consecutive_failures": 0},
        {"min_failing_seconds": -1.0},
        {"min_failing_seconds": float("nan")},
    ],
)
def test_disable_policy_rejects_impossible_thresholds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"."):
        DisablePolicy(**kwargs)  # type: ignore[arg-type]


def _attempted(subscription_id: str, *, failed: bool | None) -> Completion:
    attempt = Attempt(
        number=1,
        start_time=datetime(2026, 1, 1, tzinfo=UTC),
        status_code=500 if failed else 204,
        latency_ms=1,
        error="",
        response_snippet="",
    )
    return Completion(
        delivery_id=f"d-{subscription_id}",
        tenant="acme",
        subscription_id=subscription_id,
        attempt=attempt,
        state=DeliveryState.RETRYING if failed else DeliveryState.SUCCEEDED,
        next_attempt_time=None,
        endpoint_failed=failed,
    )


def test_a_batch_of_failures_adds_to_the_run_that_goes_on() -> None:
    runs = endpoint_runs([_attempted("a", failed=True), _attempted("a", failed=True)])
    assert runs == {"a": EndpointRun(failures=2, restart=False)}


def test_a_success_ends_the_run_and_later_failures_start_a_new_one() -> None:
    batch = [_attempted("a", failed=True), _attempted("a", failed=False)]
    assert endpoint_runs(batch) == {"a": EndpointRun(failures=0, restart=True)}
    batch.append(_attempted("a", failed=True))
    assert endpoint_runs(batch) == {"a": EndpointRun(failures=1, restart=True)}


def test_attempts_that_never_reached_the_endpoint_do_not_count() -> None:
    runs = endpoint_runs([_attempted("a", failed=None), _attempted("b", failed=True)])
    assert runs == {"b": EndpointRun(failures=1, restart=False)}
