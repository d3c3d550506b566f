"""collector.collecting_less_often: the thresholds raised for the block, put back after the
last of blocks that nest or overlap in threads, an exception included."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from consentsync.collector import BULK_THRESHOLDS, collecting_less_often


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[tuple[int, ...]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_raised_inside_and_put_back_after() -> None:
    with collecting_less_often():
        assert gc.get_threshold() == BULK_THRESHOLDS
    assert gc.get_threshold() == (700, 10, 10)


def test_put_back_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), collecting_less_often():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)


def test_a_higher_threshold_already_set_is_kept() -> None:
    gc.set_threshold(1_000_000, 5, 1_000)
    with collecting_less_often():
        assert gc.get_threshold() == (1_000_000, BULK_THRESHOLDS[1], 1_000)
    assert gc.get_threshold() == (1_000_000, 5, 1_000)


def test_nested_blocks_put_back_only_after_the_outer_one() -> None:
    with collecting_less_often():
        with collecting_less_often():
            pass
        assert gc.get_threshold() == BULK_THRESHOLDS
    assert gc.get_threshold() == (700, 10, 10)


def test_overlapping_blocks_in_threads_put_back_after_the_last() -> None:
    """The daemon runs connectors in threads: the first to end must not lower the thresholds
    under the one still running."""
    entered, first_may_end, first_ended = threading.Event(), threading.Event(), threading.Event()
    seen_after_first: list[tuple[int, ...]] = []

    def first() -> None:
        with collecting_less_often():
            entered.set()
            first_may_end.wait(5)
        first_ended.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(5)
    with collecting_less_often():
        first_may_end.set()
        assert first_ended.wait(5)
        seen_after_first.append(gc.get_threshold())
    thread.join(5)
    assert seen_after_first == [BULK_THRESHOLDS]
    assert gc.get_threshold() == (700, 10, 10)
