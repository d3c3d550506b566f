"""The read-ahead's waits end promptly once the run's stop is asked (consentsync.sync.prefetch):
a CRM call in flight holds a stop for ``STOP_GRACE_SECONDS`` at most, never until it answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from consentsync.sync.prefetch import STOP_GRACE_SECONDS, Prefetch, PrefetchEach, close_all

# What a prompt stop may take here: the grace, and the slices the waits are made in.
PROMPT = STOP_GRACE_SECONDS + 0.5


def _slow_after(first: list[str], answered: threading.Event) -> Iterator[str]:
    """``first``'s items, then a call the CRM answers only once ``answered`` is set."""
    yield from first
    answered.wait(30)
    yield "late"


def _stop_soon(stop: threading.Event, after: float = 0.2) -> None:
    threading.Timer(after, stop.set).start()


def test_a_consumer_waiting_for_a_slow_page_gets_the_end_when_the_stop_is_asked() -> None:
    stop, answered = threading.Event(), threading.Event()
    pages = Prefetch(_slow_after(["p1"], answered), stop=stop)
    try:
        assert next(pages)[0] == "p1"
        _stop_soon(stop)
        began = time.monotonic()
        with pytest.raises(StopIteration):
            next(pages)  # the second page is still with the CRM
        assert time.monotonic() - began < PROMPT
        assert not pages.finished  # cut short, not at the source's end
        began = time.monotonic()
        assert pages.close() == []  # the call in flight is left to its thread
        assert time.monotonic() - began < PROMPT
    finally:
        answered.set()


def test_close_hands_back_an_answer_that_comes_within_the_grace() -> None:
    stop, answered = threading.Event(), threading.Event()
    calls = Prefetch(_slow_after([], answered), stop=stop)
    stop.set()
    threading.Timer(STOP_GRACE_SECONDS / 4, answered.set).start()
    # A push's acknowledgement that comes in the grace is committed (no answer given is lost).
    assert [item for item, _ in calls.close()] == ["late"]


def test_without_a_stop_close_still_waits_for_the_call_in_flight() -> None:
    answered = threading.Event()
    calls = Prefetch(_slow_after([], answered))
    threading.Timer(STOP_GRACE_SECONDS + 0.5, answered.set).start()
    assert [item for item, _ in calls.close()] == ["late"]


def test_a_stop_asked_while_close_waits_ends_the_wait() -> None:
    stop, answered = threading.Event(), threading.Event()
    calls = Prefetch(_slow_after([], answered), stop=stop)
    try:
        _stop_soon(stop)
        began = time.monotonic()
        assert calls.close() == []
        assert time.monotonic() - began < 0.2 + PROMPT
    finally:
        answered.set()


def test_closing_several_waits_one_grace_for_all() -> None:
    stop, answered = threading.Event(), threading.Event()
    shares = [Prefetch(_slow_after([], answered), stop=stop) for _ in range(6)]
    try:
        stop.set()
        began = time.monotonic()
        assert close_all(shares) == [[]] * 6
        assert time.monotonic() - began < PROMPT  # not six graces one after the other
    finally:
        answered.set()


def test_a_stopped_read_does_not_go_on_to_the_next_source() -> None:
    stop, answered = threading.Event(), threading.Event()
    reads = PrefetchEach([_slow_after(["a1"], answered), iter(["b1", "b2"])], stop=stop)
    try:
        assert next(reads)[0] == "a1"
        _stop_soon(stop)
        began = time.monotonic()
        # The first read's next page is outstanding: the second read's pages, all in by now,
        # are not what comes next.
        with pytest.raises(StopIteration):
            next(reads)
        assert time.monotonic() - began < PROMPT
        reads.close()
        assert time.monotonic() - began < 2 * PROMPT
    finally:
        answered.set()
