"""The read-ahead that overlaps CRM calls with ledger commits (consentsync.sync.prefetch)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from consentsync.sync.prefetch import Prefetch


def test_items_arrive_in_order_with_the_state_captured_when_each_was_made() -> None:
    state = {"done": False}

    def source() -> Iterator[int]:
        yield from range(5)
        state["done"] = True  # as a connector marks its read complete after the last page

    got = list(Prefetch(source(), capture=lambda: state["done"]))
    assert [item for item, _ in got] == [0, 1, 2, 3, 4]
    assert [captured for _, captured in got] == [False] * 5


def test_never_more_than_depth_items_ahead_of_the_consumer() -> None:
    started: list[int] = []

    def source() -> Iterator[int]:
        for index in range(10):
            started.append(index)
            yield index

    with Prefetch(source(), depth=1) as items:
        first, _ = next(items)
        time.sleep(0.2)  # the producer may begin the next item, and no more
        assert first == 0
        assert started == [0, 1]


def test_an_error_in_the_source_is_raised_at_its_place() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise RuntimeError("the CRM went away")

    items = Prefetch(source())
    assert next(items)[0] == 1
    with pytest.raises(RuntimeError, match="went away"):
        next(items)


def test_close_hands_back_what_was_made_and_begins_nothing_new() -> None:
    stop = threading.Event()
    begun: list[int] = []

    def source() -> Iterator[int]:
        for index in range(100):
            begun.append(index)
            if index == 1:
                stop.set()  # a stop asked while item 1 is in the making
            yield index

    items = Prefetch(source(), stop=stop)
    assert next(items)[0] == 0
    time.sleep(0.2)
    left = items.close()
    assert [item for item, _ in left] == [1]
    assert begun == [0, 1]


def test_the_source_is_closed_in_its_own_thread() -> None:
    closed: list[str] = []

    def source() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(threading.current_thread().name)

    items = Prefetch(source(), name="reader")
    next(items)
    items.close()
    assert closed == ["reader"]
