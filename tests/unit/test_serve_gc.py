"""What a server process does to the cyclic garbage collector once start-up is done."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.serve import GC_YOUNG_THRESHOLD, freeze_startup_objects


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_start_up_objects_are_frozen_and_young_ones_collected_less_often() -> None:
    gc.set_threshold(700, 10, 10)
    built_at_start = {"settings": [object()]}
    freeze_startup_objects()
    assert gc.get_freeze_count() > 0
    assert all(o is not built_at_start for g in range(3) for o in gc.get_objects(g))
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)  # the older generations' stay
    assert GC_YOUNG_THRESHOLD > 700
