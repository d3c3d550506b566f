"""The read-ahead that overlaps CRM calls with ledger commits (consentsync.sync.prefetch)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from consentsync.sync.prefetch import Prefetch, PrefetchEach


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


def test_each_source_is_produced_from_the_start_and_taken_in_order() -> None:
    begun: set[str] = set()
    all_begun = threading.Event()

    def source(name: str) -> Iterator[str]:
        begun.add(name)
        if begun == {"a", "b", "c"}:
            all_begun.set()
        yield from (f"{name}1", f"{name}2")

    with PrefetchEach([source("a"), source("b"), source("c")], depth=2) as items:
        # Nothing taken yet, and every source has begun: the last one is not waiting its turn.
        assert all_begun.wait(timeout=5), begun
        assert [item for item, _ in items] == ["a1", "a2", "b1", "b2", "c1", "c2"]


def test_an_error_of_a_later_source_is_raised_at_its_place() -> None:
    def failing() -> Iterator[str]:
        yield "b1"
        raise RuntimeError("the CRM refused the second read's next page")

    taken: list[str] = []
    with PrefetchEach([iter(["a1", "a2"]), failing()]) as items, pytest.raises(RuntimeError, match="second"):
        for item, _ in items:
            taken.append(item)
    assert taken == ["a1", "a2", "b1"]


def test_closing_stops_every_source() -> None:
    produced: list[int] = []

    def endless(offset: int) -> Iterator[int]:
        number = offset
        while True:
            produced.append(number)
            yield number
            number += 2

    items = PrefetchEach([endless(0), endless(1)], depth=1)
    next(items)
    items.close()
    settled = len(produced)
    time.sleep(0.2)
    assert len(produced) == settled  # nothing is produced after close


def test_ready_hands_over_what_was_produced_without_waiting_and_an_error_after_it() -> None:
    release = threading.Event()

    def source() -> Iterator[int]:
        yield 1
        yield 2
        release.wait(5)
        raise RuntimeError("the CRM went away")

    items = Prefetch(source(), depth=5)
    deadline = time.monotonic() + 5
    got: list[int] = []
    while len(got) < 2 and time.monotonic() < deadline:
        got += [item for item, _ in items.ready()]  # never blocks on the item in the making
    assert got == [1, 2]
    assert items.ready() == []
    release.set()
    items._thread.join(5)
    with pytest.raises(RuntimeError, match="went away"):
        items.ready()
    with pytest.raises(StopIteration):
        next(items)


def test_ready_hands_over_the_items_before_an_error_and_raises_it_at_the_next_call() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise RuntimeError("the CRM went away")

    items = Prefetch(source(), depth=5)
    items._thread.join(5)  # both the item and the error are waiting
    assert [item for item, _ in items.ready()] == [1]
    with pytest.raises(RuntimeError, match="went away"):
        items.ready()


def test_waiting_tells_whether_the_next_item_is_there_without_waiting() -> None:
    release = threading.Event()

    def source() -> Iterator[int]:
        yield 1
        yield 2
        release.wait(5)  # the CRM's next page is slow
        yield 3

    for make in (lambda: Prefetch(source(), depth=3), lambda: PrefetchEach([source()], depth=3)):
        release.clear()
        with make() as pages:
            assert next(pages)[0] == 1
            deadline = time.monotonic() + 5
            while not pages.waiting and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pages.waiting  # 2 is in
            assert next(pages)[0] == 2
            time.sleep(0.1)
            assert not pages.waiting  # 3 is still being read
            release.set()
            assert next(pages)[0] == 3
