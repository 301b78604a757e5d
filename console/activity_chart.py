"""The activity chart's geometry: pure functions from a minute of per-second counts to SVG.

The dispatcher answers the last 60 seconds, oldest first, each with the attempts that left
their delivery succeeded, retrying or dead. The chart stacks the three per second, bottom
to top in that order, against a y axis whose top is a round number (1, 2 or 5 times a
power of ten) at or above the busiest second, so the tick labels read well. Everything a
template needs is computed here (in SVG user units of a fixed viewBox, scaled by CSS), so
the template only copies numbers into attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = [
    "OUTCOMES",
    "SLOTS",
    "Bar",
    "Chart",
    "SecondCounts",
    "Tick",
    "axis_top",
    "chart",
    "oldest_due_text",
    "summary",
    "totals",
]

# Outcome name and its fill, bottom of a stack first (the console's ok/warn/bad colours).
OUTCOMES: tuple[tuple[str, str], ...] = (
    ("succeeded", "#1a7f37"),
    ("retrying", "#9a6700"),
    ("dead", "#cf222e"),
)
SLOTS = 60  # one bar slot per second of the minute
WIDTH, HEIGHT = 600, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 24  # margins: tick labels left, time labels below
TARGET_TICKS = 4
_BAR_SHARE = 0.8  # of a slot; the rest is the gap between bars


class SecondCounts(Protocol):
    """One second's counts (a stub's `ActivitySecond` is one)."""

    @property
    def succeeded(self) -> int: ...

    @property
    def retrying(self) -> int: ...

    @property
    def dead(self) -> int: ...


@dataclass(frozen=True)
class Bar:
    """One outcome's part of one second's stack; `ago` is 0 for the current second."""

    x: float
    y: float
    width: float
    height: float
    outcome: str
    fill: str
    count: int
    ago: int

    @property
    def label(self) -> str:
        """`3 succeeded, 12 s ago`: a pointer's tooltip."""
        when = "this second" if self.ago == 0 else f"{self.ago} s ago"
        return f"{self.count} {self.outcome}, {when}"


@dataclass(frozen=True)
class Tick:
    """A y-axis value and where its line and label go."""

    value: int
    y: float
    label: str


@dataclass(frozen=True)
class TimeLabel:
    """A label under the x axis, anchored (`start`, `middle`, `end`) at `x`."""

    x: float
    anchor: str
    text: str


@dataclass(frozen=True)
class Chart:
    """Everything the SVG fragment draws, in viewBox units."""

    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    time_labels: tuple[TimeLabel, ...]
    y_max: int
    peak: int
    totals: tuple[tuple[str, int, str], ...]  # outcome, count in the minute, fill
    summary: str


def chart(seconds: Sequence[SecondCounts]) -> Chart:
    """The chart of `seconds` (oldest first; only the last `SLOTS` are drawn, right-aligned
    so the current second is always the rightmost bar)."""
    shown = list(seconds)[-SLOTS:]
    peak = max((_stack_total(second) for second in shown), default=0)
    y_max, step = axis_top(peak)
    counted = totals(shown)
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=WIDTH - RIGHT,
        top=TOP,
        bottom=HEIGHT - BOTTOM,
        bars=tuple(_bars(shown, y_max)),
        ticks=_ticks(y_max, step),
        time_labels=_time_labels(),
        y_max=y_max,
        peak=peak,
        totals=tuple((name, counted[name], fill) for name, fill in OUTCOMES),
        summary=summary(counted, peak),
    )


def axis_top(peak: int) -> tuple[int, int]:
    """The y axis's top and tick step: the step a round number near a quarter of `peak`,
    the top the first multiple of it at or above `peak` (1 and 1 for an idle minute)."""
    step = _round_step(peak / TARGET_TICKS)
    return max(step, step * math.ceil(peak / step)), step


def totals(seconds: Sequence[SecondCounts]) -> dict[str, int]:
    """Attempts of each outcome over `seconds`."""
    return {name: sum(_count(second, name) for second in seconds) for name, _ in OUTCOMES}


def summary(counted: dict[str, int], peak: int) -> str:
    """The chart in words, for its `<desc>`: totals of the minute and the busiest second."""
    if not any(counted.values()):
        return "No delivery attempts in the last minute."
    parts = ", ".join(f"{counted[name]} {name}" for name, _ in OUTCOMES)
    return f"In the last minute: {parts}. Busiest second: {peak} attempts."


def oldest_due_text(oldest: datetime | None, now: datetime) -> str:
    """`oldest due: 12 s ago` (whole seconds, never negative), or `nothing due`."""
    if oldest is None:
        return "nothing due"
    waited = max(0, math.floor((now - oldest).total_seconds()))
    return f"oldest due: {waited} s ago"


def _round_step(rough: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above `rough` (counts are whole)."""
    if rough <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(rough)))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough)


def _bars(seconds: Sequence[SecondCounts], y_max: int) -> list[Bar]:
    first_slot = SLOTS - len(seconds)
    bars: list[Bar] = []
    for index, second in enumerate(seconds):
        bars.extend(_stack(second, first_slot + index, y_max))
    return bars


def _stack(second: SecondCounts, slot: int, y_max: int) -> list[Bar]:
    """One second's bars, bottom up; an outcome with no attempts draws nothing."""
    slot_width = (WIDTH - RIGHT - LEFT) / SLOTS
    x = LEFT + slot * slot_width + slot_width * (1 - _BAR_SHARE) / 2
    base = float(HEIGHT - BOTTOM)
    bars: list[Bar] = []
    for name, fill in OUTCOMES:
        count = _count(second, name)
        if count <= 0:
            continue
        height = count / y_max * (HEIGHT - BOTTOM - TOP)
        base -= height
        geometry = (_r(x), _r(base), _r(slot_width * _BAR_SHARE), _r(height))
        bars.append(Bar(*geometry, outcome=name, fill=fill, count=count, ago=SLOTS - 1 - slot))
    return bars


def _ticks(y_max: int, step: int) -> tuple[Tick, ...]:
    plot = HEIGHT - BOTTOM - TOP
    return tuple(
        Tick(value=value, y=_r(HEIGHT - BOTTOM - value / y_max * plot), label=f"{value:,}")
        for value in range(0, y_max + 1, step)
    )


def _time_labels() -> tuple[TimeLabel, ...]:
    middle = LEFT + (WIDTH - RIGHT - LEFT) / 2
    return (
        TimeLabel(x=LEFT, anchor="start", text=f"{SLOTS} s ago"),
        TimeLabel(x=_r(middle), anchor="middle", text=f"{SLOTS // 2} s ago"),
        TimeLabel(x=WIDTH - RIGHT, anchor="end", text="now"),
    )


def _count(second: SecondCounts, outcome: str) -> int:
    value: int = getattr(second, outcome)
    return max(0, value)


def _stack_total(second: SecondCounts) -> int:
    return sum(_count(second, name) for name, _ in OUTCOMES)


def _r(value: float) -> float:
    return round(value, 2)
