"""The collector settings both services apply at start."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service_common.garbage_collection import YOUNG_THRESHOLD, tune_for_service


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_existing_objects_are_frozen_and_young_collections_come_less_often() -> None:
    _, middle, old = gc.get_threshold()
    gc.unfreeze()

    tune_for_service()

    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 1000  # the imported modules, at least


@pytest.mark.usefixtures("restored_collector")
def test_cycles_made_after_start_are_collected_without_being_asked() -> None:
    tune_for_service()

    class Node:
        other: object = None

    collected: list[int] = []
    gc.callbacks.append(lambda phase, info: collected.append(info["collected"]))
    try:
        for _ in range(2 * YOUNG_THRESHOLD):
            first, second = Node(), Node()
            first.other, second.other = second, first
    finally:
        gc.callbacks.pop()
    assert sum(collected) >= YOUNG_THRESHOLD
