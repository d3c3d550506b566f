"""Where an incremental read starts (``Connector.resume_from``) and goes back to after the CRM's
clock was set back (``Connector.rewound``), and when the engine takes a clock for set back
(``_set_back_by``): the rules the integration tests (test_s69_crm_clock_set_back.py) rely on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consentsync_hubspot.connector import HubSpotConnector
from consentsync_salesforce.connector import SalesforceConnector

from consentsync.sdk import Cursor
from consentsync.sdk.clock import ClockOffset
from consentsync.sync.engine import _set_back_by, _stored_offset

T = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=5)
S = timedelta(seconds=1)


def _resume(cursor: Cursor) -> Cursor:
    return HubSpotConnector.resume_from(HubSpotConnector.__new__(HubSpotConnector), cursor, WINDOW)


def test_a_position_past_the_reads_bound_resumes_the_window_behind_the_bound() -> None:
    # Inside the bound: the window behind the bound, as before.
    assert _resume(Cursor(T - 60 * S, "a", None, T)) == Cursor(T - WINDOW)
    # Before the window: the position itself.
    assert _resume(Cursor(T - 2 * WINDOW, "a", None, T)) == Cursor(T - 2 * WINDOW, "a")
    # Past the bound (stamped by a clock set back since, or a bound the CRM said it was whole up
    # to): the window behind the bound, not behind the position.
    assert _resume(Cursor(T + 15 * 60 * S, "a", None, T)) == Cursor(T - WINDOW)
    # No bound kept: the window behind the position.
    assert _resume(Cursor(T, "a")) == Cursor(T - WINDOW)


def test_rewound_moves_a_plain_position_and_keeps_a_token_where_no_clock_moves_it() -> None:
    plain = HubSpotConnector.__new__(HubSpotConnector)
    assert plain.rewound(Cursor(T, "a"), 60 * S) == Cursor(T - 60 * S)
    assert plain.rewound(Cursor(T - WINDOW), 60 * S) == Cursor(T - WINDOW - 60 * S)
    assert plain.rewound(Cursor(T, "a", "delta-link"), 60 * S) is None
    assert plain.rewound(Cursor(), 60 * S) is None
    # Salesforce's hold: a moment of the org's clock in the token; back from the earlier one.
    salesforce = SalesforceConnector.__new__(SalesforceConnector)
    held = Cursor(T, "a", '{"v":1}', T - 30 * S)
    assert salesforce.rewound(held, 60 * S) == Cursor(T - 90 * S)


def test_a_clock_is_taken_for_set_back_only_beyond_the_margins_of_its_answers() -> None:
    before = ClockOffset(-1 * S, 500 * timedelta(milliseconds=1))  # in step, within one answer
    assert _set_back_by(before, ClockOffset(-1200 * timedelta(milliseconds=1), 0 * S)) is None
    assert _set_back_by(before, ClockOffset(4 * S, 5 * S)) is None  # set forward
    set_back = ClockOffset(-901 * S, -900 * S)
    assert _set_back_by(before, set_back) == 901 * S + 500 * timedelta(milliseconds=1)
    # As kept in a cursor's JSON, and anything else there is no offset.
    assert _stored_offset({"crm_clock": {"low_us": -1_000_000, "high_us": 500_000}}) == before
    for garbled in (None, {}, {"crm_clock": "x"}, {"crm_clock": {"low_us": 2, "high_us": 1}}):
        assert _stored_offset(garbled) is None
