"""Where an incremental read starts again (Connector.resume_from): the look-back window behind
the stored position, bounded by the window behind the last read's upper bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from consentsync.sdk import Cursor
from consentsync.sdk.connector import Connector

WINDOW = timedelta(minutes=10)
T = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class _Connector:
    """What resume_from reads of a connector: its look-back window."""

    lookback = WINDOW
    resume_from = Connector.resume_from


def _connector() -> _Connector:
    return _Connector()


def test_without_the_last_reads_bound_the_window_is_behind_the_position() -> None:
    assert _connector().resume_from(Cursor(T, "b")) == Cursor(T - WINDOW)


def test_changes_after_the_last_read_start_the_window_behind_that_read() -> None:
    # The position is our own writes, stamped a minute before the read ended: only what could
    # still have been committed late (stamped within the window before the bound) is read again.
    stored = Cursor(T - timedelta(minutes=1), "b", read_until=T)
    assert _connector().resume_from(stored) == Cursor(T - WINDOW)
    stored = Cursor(T + timedelta(hours=1), "b", read_until=T + timedelta(hours=1, minutes=2))
    assert _connector().resume_from(stored) == Cursor(T + timedelta(hours=1, minutes=2) - WINDOW)


def test_a_position_older_than_the_window_is_resumed_exactly() -> None:
    # Nothing changed for an hour before the last read: every record at or before the position
    # was visible to it, so the read resumes after the position, reading nothing twice.
    stored = Cursor(T - timedelta(hours=1), "b", read_until=T)
    assert _connector().resume_from(stored) == Cursor(T - timedelta(hours=1), "b")


def test_a_token_cursor_is_kept() -> None:
    stored = Cursor(T, "b", token="delta", read_until=T)
    assert _connector().resume_from(stored) is stored


@given(
    position=st.integers(min_value=0, max_value=7200),
    bound=st.integers(min_value=0, max_value=7200),
)
def test_the_start_never_misses_a_change_that_could_still_appear(position: int, bound: int) -> None:
    """Whatever the position and the last read's bound (position <= bound), every record stamped
    after the position, and every record stamped within the window before the bound (it may
    have been committed after that read), is at or after the start; and the start is never
    earlier than the window behind the position."""
    moment = T + timedelta(seconds=min(position, bound))
    until = T + timedelta(seconds=bound)
    start = _connector().resume_from(Cursor(moment, "m", read_until=until))
    assert start.modstamp is not None
    assert start.modstamp >= moment - WINDOW
    late = until - WINDOW + timedelta(seconds=1)  # could have been invisible to the last read
    assert start.is_before(late, "a")
    assert start.is_before(moment, "n")  # a record after the position in (stamp, id) order
