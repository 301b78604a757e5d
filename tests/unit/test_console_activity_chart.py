"""The activity chart's geometry: stacked bars per second, a round y axis, the totals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from console import activity_chart as ac
from console.activity_chart import Bar, axis_top, chart, oldest_due_text, summary, totals
from webhooks.v1 import dispatcher_service_pb2 as pb


@dataclass(frozen=True)
class Second:
    succeeded: int = 0
    retrying: int = 0
    dead: int = 0


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PLOT_BOTTOM = ac.HEIGHT - ac.BOTTOM
PLOT_HEIGHT = ac.HEIGHT - ac.BOTTOM - ac.TOP


def idle_minute() -> list[Second]:
    return [Second() for _ in range(ac.SLOTS)]


@pytest.mark.parametrize(
    ("peak", "top", "step"),
    [
        (0, 1, 1),
        (1, 1, 1),
        (3, 3, 1),
        (7, 8, 2),
        (10, 10, 5),
        (19, 20, 5),
        (100, 100, 50),
        (1234, 1500, 500),
    ],
)
def test_the_axis_top_is_a_round_multiple_at_or_above_the_peak(
    peak: int, top: int, step: int
) -> None:
    assert axis_top(peak) == (top, step)


def test_an_idle_minute_draws_no_bars_and_says_so() -> None:
    drawn = chart(idle_minute())
    assert drawn.bars == ()
    assert drawn.y_max == 1
    assert [tick.label for tick in drawn.ticks] == ["0", "1"]
    assert drawn.summary == "No delivery attempts in the last minute."
    assert drawn.totals == tuple((name, 0, fill) for name, fill in ac.OUTCOMES)


def test_a_second_stacks_succeeded_then_retrying_then_dead_from_the_bottom() -> None:
    seconds = idle_minute()
    seconds[-1] = Second(succeeded=4, retrying=2, dead=2)
    drawn = chart(seconds)
    assert drawn.y_max == 8
    succeeded, retrying, dead = drawn.bars
    assert [bar.outcome for bar in drawn.bars] == ["succeeded", "retrying", "dead"]
    assert succeeded.y + succeeded.height == pytest.approx(PLOT_BOTTOM)
    assert retrying.y + retrying.height == pytest.approx(succeeded.y)
    assert dead.y + dead.height == pytest.approx(retrying.y)
    assert dead.y == pytest.approx(ac.TOP)  # the peak reaches the axis top
    assert succeeded.height == pytest.approx(PLOT_HEIGHT / 2)
    assert {bar.x for bar in drawn.bars} == {succeeded.x}
    assert succeeded.x + succeeded.width <= ac.WIDTH - ac.RIGHT
    assert (succeeded.ago, succeeded.label) == (0, "4 succeeded, this second")


def test_bars_go_left_to_right_oldest_first_and_skip_empty_outcomes() -> None:
    seconds = idle_minute()
    seconds[0] = Second(dead=1)
    seconds[30] = Second(retrying=1)
    drawn = chart(seconds)
    oldest, middle = drawn.bars
    assert (oldest.outcome, oldest.ago, oldest.label) == ("dead", 59, "1 dead, 59 s ago")
    assert (middle.outcome, middle.ago) == ("retrying", 29)
    assert ac.LEFT <= oldest.x < middle.x
    assert oldest.fill == dict(ac.OUTCOMES)["dead"]


def test_a_short_answer_is_right_aligned_and_a_long_one_keeps_its_last_minute() -> None:
    short = chart([Second(succeeded=1)])
    [bar] = short.bars
    assert bar.ago == 0
    full = chart([Second(succeeded=1), *idle_minute()])
    assert full.bars == ()


def test_ticks_run_from_the_bottom_to_the_top_of_the_plot() -> None:
    seconds = idle_minute()
    seconds[10] = Second(succeeded=1000, retrying=234)
    ticks = chart(seconds).ticks
    assert [tick.label for tick in ticks] == ["0", "500", "1,000", "1,500"]
    assert ticks[0].y == pytest.approx(PLOT_BOTTOM)
    assert ticks[-1].y == pytest.approx(ac.TOP)


def test_totals_and_summary_count_the_whole_minute() -> None:
    seconds = [Second(succeeded=2, retrying=1), Second(succeeded=3, dead=1)]
    counted = totals(seconds)
    assert counted == {"succeeded": 5, "retrying": 1, "dead": 1}
    assert summary(counted, 4) == (
        "In the last minute: 5 succeeded, 1 retrying, 1 dead. Busiest second: 4 attempts."
    )


def test_negative_counts_draw_nothing() -> None:
    drawn = chart([Second(succeeded=-3)])
    assert drawn.bars == ()
    assert drawn.totals[0][1] == 0


def test_the_stubs_activity_seconds_are_accepted() -> None:
    seconds = [pb.ActivitySecond(succeeded=1, retrying=1, dead=0) for _ in range(ac.SLOTS)]
    drawn = chart(seconds)
    assert len(drawn.bars) == 2 * ac.SLOTS
    assert all(isinstance(bar, Bar) for bar in drawn.bars)


def test_time_labels_span_the_plot() -> None:
    labels = chart(idle_minute()).time_labels
    assert [(label.anchor, label.text) for label in labels] == [
        ("start", "60 s ago"),
        ("middle", "30 s ago"),
        ("end", "now"),
    ]


@pytest.mark.parametrize(
    ("oldest", "said"),
    [
        (None, "nothing due"),
        (NOW - timedelta(seconds=12.9), "oldest due: 12 s ago"),
        (NOW, "oldest due: 0 s ago"),
        (NOW + timedelta(seconds=3), "oldest due: 0 s ago"),  # another host's clock ahead
    ],
)
def test_oldest_due_text(oldest: datetime | None, said: str) -> None:
    assert oldest_due_text(oldest, NOW) == said
