"""Date filters are days in the viewer's time zone (issue 16): ``parse_day`` and ``viewer_zone``
without a ledger, at the edges (a day across a DST change, the calendar's ends, a zone name that
is a path), and the ``soft`` filter that lets identifiers wrap between their parts."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from starlette.requests import Request

from consentsync.domain import InvalidInput
from consentsync.web.console import parse_day
from consentsync.web.deps import viewer_zone
from consentsync.web.rendering import soft_breaks

SYDNEY = ZoneInfo("Australia/Sydney")


def test_a_day_starts_at_the_viewers_midnight_and_ends_at_the_next() -> None:
    assert parse_day("2026-12-03", "since", zone=SYDNEY) == datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
    assert parse_day("2026-12-03", "until", end=True, zone=SYDNEY) == datetime(2026, 12, 3, 13, 0, tzinfo=UTC)
    assert parse_day("2026-12-03", "since") == datetime(2026, 12, 3, tzinfo=UTC)  # no zone: UTC
    # The day Sydney leaves daylight saving (5 April 2026) has 25 hours.
    start = parse_day("2026-04-05", "since", zone=SYDNEY)
    end = parse_day("2026-04-05", "until", end=True, zone=SYDNEY)
    assert start is not None and end is not None and (end - start).total_seconds() == 25 * 3600
    # A time without an offset is the viewer's too; one with an offset is what it says.
    assert parse_day("2026-12-03T09:00", "since", zone=SYDNEY) == datetime(2026, 12, 2, 22, 0, tzinfo=UTC)
    assert parse_day("2026-12-03T09:00Z", "since", zone=SYDNEY) == datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "end"),
    [("9999-12-31", True), ("0001-01-01", False), ("2026-02-30", False), ("yesterday", False)],
)
def test_a_day_outside_the_calendar_is_refused_as_input(value: str, end: bool) -> None:
    with pytest.raises(InvalidInput, match="expected a date"):
        parse_day(value, "until" if end else "since", end=end, zone=SYDNEY)


def _request(query: str = "", cookie: str = "") -> Request:
    headers = [(b"cookie", cookie.encode())] if cookie else []
    return Request(
        {"type": "http", "method": "GET", "path": "/", "query_string": query.encode(), "headers": headers}
    )


def test_the_viewers_zone_comes_from_the_field_the_query_or_the_cookie_else_utc() -> None:
    assert viewer_zone(_request(), "Australia/Sydney").name == "Australia/Sydney"
    assert viewer_zone(_request("tz=Europe/Berlin")).zone == ZoneInfo("Europe/Berlin")
    assert viewer_zone(_request(cookie="tz=America/New_York")).name == "America/New_York"
    assert viewer_zone(_request("tz=Asia/Tokyo", cookie="tz=America/New_York")).name == "Asia/Tokyo"
    for bad in ("../../etc/passwd", "Mars/Olympus", "x" * 100, ""):
        found = viewer_zone(_request(), bad)
        assert (found.name, found.known, found.zone) == ("UTC", False, UTC)


def test_identifiers_wrap_between_their_parts_and_stay_escaped() -> None:
    assert str(soft_breaks("sf:ContactPointTypeConsent")) == "sf:<wbr>ContactPointTypeConsent"
    assert str(soft_breaks("sticky_withdrawal")) == "sticky_<wbr>withdrawal"
    assert str(soft_breaks("<b>x</b>")) == "&lt;b&gt;x&lt;/<wbr>b&gt;"
    assert str(soft_breaks("a. b")) == "a. b"  # no break opportunity before a space: it has one
