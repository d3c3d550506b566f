"""The CRM's own clock, as its HTTP answers tell it.

A CRM stamps every change with its own clock, and an incremental read asks for the changes
stamped up to a moment (``until``); the next read's look-back window starts behind that moment
(``Cursor.read_until``). Both must be moments of the CRM's clock: where it runs behind ours, a
bound taken from our clock lies in the CRM's future, and a change it stamps just after the read
(or that commits late, stamped a little before) falls behind the next read's window and is never
read.

Every answer says the server's time in its ``Date`` header (RFC 9110 section 6.6.1, which
replaced RFC 7231 section 7.1.1.2): the moment the server made the answer, in whole seconds (the
fraction is dropped). ``http_session`` (every connector's session) hands each answer to the
:class:`CrmClock` of the settings it was made from; :meth:`Connector.crm_clock
<consentsync.sdk.connector.Connector.crm_clock>` finds it, and the sync engine bounds a run's
``until`` by :func:`bounded_until`.

What one answer proves: the server made it after the request left (``sent``, our clock) and
before the answer arrived (``received``), at a moment its clock read between ``Date`` and
``Date`` + 1 s. So the CRM's clock runs at least ``Date - received`` and less than
``Date + 1 s - sent`` ahead of ours (negative: behind): :class:`ClockOffset`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import structlog

__all__ = [
    "MAX_PLAUSIBLE_OFFSET",
    "ClockOffset",
    "CrmClock",
    "bounded_until",
    "http_date",
    "offset_from_date",
]

log = structlog.get_logger("consentsync.sdk")

#: A ``Date`` this far from our clock is taken for a broken header (a server whose clock was never
#: set, a proxy's made-up value), not for the CRM's clock: bounding reads by it would stop them.
MAX_PLAUSIBLE_OFFSET = timedelta(days=1)

_ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class ClockOffset:
    """How far the CRM's clock runs ahead of ours (negative: behind): at least ``low``, less than
    ``high``."""

    low: timedelta
    high: timedelta

    @property
    def behind(self) -> bool:
        """Whether the CRM's clock is known to run behind ours: even the highest reading of its
        answer says so. A clock within the answer's margin of ours is not taken for behind."""
        return self.high < timedelta(0)


def http_date(text: str | None) -> datetime | None:
    """An HTTP date (RFC 9110's IMF-fixdate, or the obsolete RFC 850 and asctime forms) in UTC,
    or None when missing or unreadable. A date without a zone is GMT, as HTTP dates are."""
    if not text or not text.strip():
        return None
    try:
        stamp = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def offset_from_date(date: str | None, sent: datetime, received: datetime) -> ClockOffset | None:
    """What an answer's ``Date`` header says of the server's clock against ours, for a request
    sent at ``sent`` whose answer arrived at ``received`` (our clock, aware). None where the
    header is missing, unreadable or implausible (:data:`MAX_PLAUSIBLE_OFFSET`), or the times are
    out of order."""
    stamp = http_date(date)
    if stamp is None or received < sent:
        return None
    offset = ClockOffset(low=stamp - received, high=stamp + _ONE_SECOND - sent)
    if abs(offset.low) > MAX_PLAUSIBLE_OFFSET or abs(offset.high) > MAX_PLAUSIBLE_OFFSET:
        return None
    return offset


def bounded_until(until: datetime, started: datetime, lag: timedelta, offset: ClockOffset | None) -> datetime:
    """A read's upper bound: ``until`` (``started`` less ``lag``, our clock), no later than the
    CRM's own clock at ``started`` less ``lag`` where the CRM's clock is known to run behind ours
    (its lowest reading: the bound is then a moment the CRM had reached when the run started).

    A CRM whose clock runs ahead (or that said nothing yet) keeps ``until``: an earlier moment
    of its clock, so the changes it stamped since wait for the next run, and a ``Date`` header
    ahead of the clock that stamps the records (a front end's) cannot make a read take a second
    that is not over."""
    if offset is None or not offset.behind:
        return until
    return min(until, started + offset.low - lag)


class CrmClock:
    """What the answers of one connector's session said of its servers' clocks: the latest
    :class:`ClockOffset` of each host (a token endpoint may be another server, with a clock of
    its own). Thread-safe: readers and writers share a session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, ClockOffset] = {}
        self._said_behind: set[str] = set()

    def observe(self, response: Any) -> None:
        """Takes the ``Date`` of an answer (a ``requests.Response``) that just arrived: it was
        sent ``response.elapsed`` before now. An answer without a readable ``Date`` is ignored."""
        received = datetime.now(UTC)
        elapsed = getattr(response, "elapsed", None)
        sent = received - elapsed if isinstance(elapsed, timedelta) else received
        request = getattr(response, "request", None)
        url = getattr(request, "url", None) or getattr(response, "url", None) or ""
        headers: Mapping[str, str] = getattr(response, "headers", None) or {}
        self.observe_date(_host(str(url)), headers.get("Date"), sent, received)

    def observe_date(self, host: str, date: str | None, sent: datetime, received: datetime) -> None:
        """Takes an answer's ``Date`` header from ``host``, for a request sent at ``sent`` and
        answered at ``received`` (our clock)."""
        offset = offset_from_date(date, sent, received)
        if offset is None:
            return
        with self._lock:
            self._hosts[host] = offset
            first = offset.behind and host not in self._said_behind
            if first:
                self._said_behind.add(host)
        if first:
            # Once a session per server: no host, no URL (they can carry more than a name).
            log.info(
                "crm_clock.behind",
                seconds_behind_at_least=round(-offset.high.total_seconds(), 3),
                seconds_behind_at_most=round(-offset.low.total_seconds(), 3),
            )

    def offset(self) -> ClockOffset | None:
        """The clock of the server running furthest behind (lowest readings of all hosts), or
        None before any answer with a readable ``Date``."""
        with self._lock:
            known = list(self._hosts.values())
        if not known:
            return None
        return ClockOffset(low=min(o.low for o in known), high=min(o.high for o in known))


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
