"""Runs an iterator one step ahead in a thread of its own, so that the next CRM call (a query page,
a write batch) is in flight while the current one is committed to the ledger.

Bounded: at most ``depth`` items are produced ahead of the consumer, the one in the making
included, so memory stays flat however long the stream. Each item is
handed over with ``capture()``'s value taken right after the item was produced (the connector's
state at that moment: whether its read had ended), never a later one. An exception in the thread
is raised in the consumer, at the item where it happened. ``close()`` stops the thread after the
call in flight and hands back what it produced meanwhile, so that a stopped run can still commit
every answer the CRM gave.

A stop is prompt: no wait here outlasts the run's stop (``stop``) by more than
``STOP_GRACE_SECONDS``. A consumer waiting for an item when the stop is asked gets the end of the
items at once; ``close()`` waits that long for the call in flight, then leaves it to end in its
thread, its answer unread, as a crash there would: a page not committed is read again by the next
run, a push marked sent and not answered is sent again (a slow CRM page, with its retries, held a
SIGTERM for minutes).

The standard library's ``concurrent.futures`` runs calls, not generators that must stay on one
thread and stop between items; this is the small bounded queue that does that.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import structlog

from consentsync.sync.lease import call_fence

log = structlog.get_logger("consentsync.sync")

T = TypeVar("T")

_END = object()

# How long, once the run's stop is asked, a wait goes on for a CRM call in flight: a push's
# answer that comes by then is committed; after it the run stops without it.
STOP_GRACE_SECONDS = 0.5
# The slices a wait is made in, each ending with a look at the stop: an untimed wait saw it only
# once the CRM answered.
_POLL_SECONDS = 0.05


class _Grace:
    """When the waits of a stopping run end: ``STOP_GRACE_SECONDS`` after the first of them saw
    the stop. Shared by the prefetches closed together (a push's shares, each read's pages), so
    that closing several waits one grace, not one each."""

    __slots__ = ("ends",)

    def __init__(self) -> None:
        self.ends: float | None = None

    def timeout(self, stopping: bool) -> float:
        """The next slice to wait (0: the grace is over)."""
        if not stopping:
            return _POLL_SECONDS
        now = time.monotonic()
        if self.ends is None:
            self.ends = now + STOP_GRACE_SECONDS
        return max(0.0, min(_POLL_SECONDS, self.ends - now))


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch(Generic[T]):
    """``for item, captured in Prefetch(source, capture=...)``: the items of ``source``, produced
    in a background thread at most ``depth`` ahead of the consumer."""

    def __init__(
        self,
        source: Iterable[T],
        *,
        depth: int = 1,
        capture: Callable[[], Any] = lambda: None,
        stop: threading.Event | None = None,
        name: str = "consentsync-prefetch",
        arrived: threading.Event | None = None,
    ) -> None:
        self._source = iter(source)
        # Set whenever an item (or the end, or an error) is handed over: one event can wake a
        # consumer of several of these, whichever has something first.
        self._arrived = arrived or threading.Event()
        self._capture = capture
        self._queue: queue.Queue[Any] = queue.Queue()
        # A slot is taken before an item is asked for and given back when the consumer takes one.
        self._slots = threading.Semaphore(max(1, depth))
        self._stop = threading.Event()
        self._asked_to_stop = stop or threading.Event()  # the run's stop: no new item is begun
        self._finished = False
        self._error: BaseException | None = None  # met by ready(), raised at the next item
        # Each item is a CRM call: made only while the run still owns its connector (its lease,
        # taken from the context of the thread that builds this one). A lost lease is raised to
        # the consumer as the source's error would be.
        self._fence = call_fence()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _may_begin(self) -> bool:
        while not (self._stop.is_set() or self._asked_to_stop.is_set()):
            if self._slots.acquire(timeout=0.05):
                return True
        return False

    def _produce(self) -> None:
        try:
            while self._may_begin():
                self._fence()
                try:
                    item = next(self._source)
                except StopIteration:
                    break
                self._queue.put((item, self._capture()))
                self._arrived.set()
            self._queue.put(_END)
        except BaseException as error:  # handed to the consumer, raised there
            self._queue.put(_Raised(error))
        finally:
            self._arrived.set()
            close = getattr(self._source, "close", None)
            if close is not None:
                # The source's own clean-up: its errors, if any, were already handed over above.
                with contextlib.suppress(Exception):
                    close()

    def __iter__(self) -> Iterator[tuple[T, Any]]:
        return self

    def __next__(self) -> tuple[T, Any]:
        """The next item; the end of the items when the source ended or, with nothing produced
        to take, as soon as the run's stop is asked (``finished`` then stays False)."""
        self._raise_met()
        if self._finished:
            raise StopIteration
        while True:
            try:
                got = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stopping():
                    raise StopIteration from None
                continue
            return self._take(got)  # type: ignore[no-any-return]

    def _stopping(self) -> bool:
        return self._asked_to_stop.is_set() or self._stop.is_set()

    def ready(self) -> list[tuple[T, Any]]:
        """The items produced and not yet taken, without waiting for more. An exception met
        after them is raised at the next call of ``ready`` or ``next``."""
        self._raise_met()
        items: list[tuple[T, Any]] = []
        while not self._finished:
            try:
                got = self._queue.get_nowait()
            except queue.Empty:
                break
            try:
                items.append(self._take(got))
            except StopIteration:
                break
            except BaseException as error:
                if not items:
                    raise
                self._error = error
                break
        return items

    @property
    def waiting(self) -> bool:
        """Whether the next item (or the end, or an error) is there to take without waiting."""
        return self._error is not None or not self._queue.empty()

    @property
    def finished(self) -> bool:
        """True once the consumer took the last item (or the error that ended the source)."""
        return self._finished and self._error is None

    def _raise_met(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _take(self, got: Any) -> Any:
        self._slots.release()
        if got is _END:
            self._finished = True
            self._join(_Grace())
            raise StopIteration
        if isinstance(got, _Raised):
            self._finished = True
            self._join(_Grace())
            raise got.error
        return got

    def _join(self, grace: _Grace) -> None:
        """Waits for the thread to end; once the run's stop is asked, until ``grace`` ends at
        the latest. A thread still in a CRM call then is left to it: it begins nothing after."""
        while self._thread.is_alive():
            timeout = grace.timeout(self._asked_to_stop.is_set())
            if timeout <= 0:
                # Operators see why the stop did not wait for that call (its thread names the
                # connector and the stage, nothing of a person).
                log.info("sync.call_left_in_flight", thread=self._thread.name)
                return
            self._thread.join(timeout)

    def close(self) -> list[tuple[T, Any]]:
        """Stops producing after the item in progress; returns the items produced and not taken
        (an exception raised meanwhile is dropped: the consumer is stopping anyway). Once the
        run's stop is asked, the item in progress is waited for ``STOP_GRACE_SECONDS`` at most."""
        return close_all([self])[0]

    def _closed(self, grace: _Grace) -> list[tuple[T, Any]]:
        self._join(grace)
        left: list[tuple[T, Any]] = []
        while True:
            try:
                got = self._queue.get_nowait()
            except queue.Empty:
                break
            if got is not _END and not isinstance(got, _Raised):
                left.append(got)
        self._finished = True
        return left

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class PrefetchEach(Generic[T]):
    """The items of several sources in order (all of the first, then all of the second, ...),
    each source produced from the start by a ``Prefetch`` of its own, at most ``depth`` ahead.

    For independent reads (one per CRM object): their first pages are asked for side by side, so
    a run waits about one round trip for them instead of one per object, while the consumer
    still takes them one after the other, exactly as from a single source."""

    def __init__(
        self,
        sources: Iterable[Iterable[T]],
        *,
        depth: int = 1,
        stop: threading.Event | None = None,
        name: str = "consentsync-prefetch",
    ) -> None:
        self._each: list[Prefetch[T]] = []
        try:
            for number, source in enumerate(sources):
                self._each.append(Prefetch(source, depth=depth, stop=stop, name=f"{name}-{number}"))
        except BaseException:
            self.close()
            raise
        self._current = 0

    def __iter__(self) -> Iterator[tuple[T, Any]]:
        return self

    @property
    def waiting(self) -> bool:
        """Whether the current source's next item is there to take without waiting."""
        return self._current < len(self._each) and self._each[self._current].waiting

    def __next__(self) -> tuple[T, Any]:
        while self._current < len(self._each):
            current = self._each[self._current]
            try:
                return next(current)
            except StopIteration:
                if not current.finished:
                    # Cut short by the run's stop: a later source's items do not come next.
                    raise
                self._current += 1
        raise StopIteration

    def close(self) -> None:
        """Stops every source after the call it has in flight (once the run's stop is asked,
        after ``STOP_GRACE_SECONDS`` at most, for all of them together)."""
        close_all(self._each)

    def __enter__(self) -> PrefetchEach[T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def close_all(prefetches: Iterable[Prefetch[Any]]) -> list[list[tuple[Any, Any]]]:
    """``close()`` of each, all asked to stop first and waited for within one grace: the items
    each produced and not taken, in the same order."""
    each = list(prefetches)
    for prefetch in each:
        prefetch._stop.set()
    grace = _Grace()
    return [prefetch._closed(grace) for prefetch in each]
