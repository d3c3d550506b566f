"""Dynamics Customer Insights - Journeys: an edit of an existing consent row (a preference
center's Opted in to Opted out, a marketer's correction) hands over only the contacts it can have
changed, where Dataverse audits the rows' addresses.

The consent rows' delta shows a row as it is now, not where it was: an edited row may have been
moved from another address, whose contacts would keep a purpose the address no longer has a row
for. Before, any edit of an existing row had every contact checked again (one read of every
contact and their look-ups, each run a row was edited). Where auditing is on for the environment,
the consent table and its address column, the row's audit history (RetrieveRecordChangeHistory:
each update's OldValue) names every address it held: the contacts there and at its address now
are handed over, and no other. Where it is not (or the history cannot be read, or does not hold
the edit yet: audit rows may show up late), every contact is checked as before."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import Cursor
from tests.connectors.test_dynamics_journeys_consent_changes import (
    CONSENTS,
    MARKETING_FIELD,
    _connector,
    _people,
    _read,
    _row,
)

OPTED_IN = 534120001
COUNT = 12


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    with DynamicsSandbox() as server:
        yield server


def _audited(dv: DynamicsSandbox) -> None:
    dv.environment.auditing = True
    dv.environment.tables[CONSENTS].audited = True


def test_a_preference_center_edit_hands_over_only_the_contact_at_its_address(dv: DynamicsSandbox) -> None:
    _audited(dv)
    people = _people(dv, COUNT)
    row = _row(dv, "person5@example.test")
    connector = _connector(dv)
    first, cursor = _read(connector, Cursor())
    assert first[people[5]].fields[MARKETING_FIELD] is True
    dv.environment.update(CONSENTS, row, {"msdynmkt_value": OPTED_IN})  # the person's own change
    edited, cursor = _read(connector, cursor)
    assert list(edited) == [people[5]], f"{len(edited)} contacts handed over for one row's edit"
    assert edited[people[5]].fields[MARKETING_FIELD] is True
    assert _read(connector, cursor)[0] == {}


def test_a_row_moved_twice_hands_over_the_contacts_at_every_address_it_held(dv: DynamicsSandbox) -> None:
    _audited(dv)
    people = _people(dv, COUNT)
    row = _row(dv, "person5@example.test")
    connector = _connector(dv)
    _, cursor = _read(connector, Cursor())
    dv.environment.update(CONSENTS, row, {"msdynmkt_contactpointvalue": "person7@example.test"})
    dv.environment.update(CONSENTS, row, {"msdynmkt_contactpointvalue": "PERSON9@example.test"})
    moved, cursor = _read(connector, cursor)
    assert set(moved) == {people[5], people[7], people[9]}
    assert [moved[people[n]].fields[MARKETING_FIELD] for n in (5, 7, 9)] == [None, None, True]
    assert _read(connector, cursor)[0] == {}


def test_a_row_made_a_text_message_row_hands_over_the_contact_it_left(dv: DynamicsSandbox) -> None:
    _audited(dv)
    people = _people(dv, COUNT)
    row = _row(dv, "person2@example.test")
    connector = _connector(dv)
    _, cursor = _read(connector, Cursor())
    dv.environment.update(
        CONSENTS, row, {"msdynmkt_contactpointtype": 534120001, "msdynmkt_contactpointvalue": "+15550100"}
    )
    switched, _ = _read(connector, cursor)
    assert list(switched) == [people[2]] and switched[people[2]].fields[MARKETING_FIELD] is None


@pytest.mark.parametrize("gap", ["environment", "table", "column", "privilege"])
def test_without_a_complete_audit_history_a_moved_row_still_has_every_contact_checked(
    dv: DynamicsSandbox, gap: str
) -> None:
    """Auditing off somewhere (or its history unreadable): the edit may have moved the row, and
    nothing says from where. Every contact is checked, as before: the contact it left is handed
    over without the purpose."""
    _audited(dv)
    if gap == "environment":
        dv.environment.auditing = False
    elif gap == "table":
        dv.environment.tables[CONSENTS].audited = False
    elif gap == "column":
        columns = dv.environment.tables[CONSENTS].columns
        columns["msdynmkt_contactpointvalue"] = replace(columns["msdynmkt_contactpointvalue"], audited=False)
    else:
        dv.audit_readable = False
    people = _people(dv, COUNT)
    row = _row(dv, "person5@example.test")
    connector = _connector(dv)
    _, cursor = _read(connector, Cursor())
    dv.environment.update(CONSENTS, row, {"msdynmkt_contactpointvalue": "person7@example.test"})
    moved, _ = _read(connector, cursor)
    assert moved[people[5]].fields[MARKETING_FIELD] is None
    assert moved[people[7]].fields[MARKETING_FIELD] is True
    assert set(moved) == set(people)  # every contact checked: none has a row for the purpose


def test_an_audit_row_that_shows_up_late_does_not_lose_the_contact_a_row_left(
    dv: DynamicsSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dataverse: "Audit logs may show up with a delay in the Audit History tab of a record ...
    because audit logs are stored in the Dataverse log storage" (Manage Dataverse auditing). The delta
    shows the moved row at once and its link moves past it; the row's history does not hold the
    move yet: every contact is checked, as without auditing (the contact it left would otherwise
    keep the purpose for good)."""
    _audited(dv)
    people = _people(dv, COUNT)
    row = _row(dv, "person5@example.test")
    connector = _connector(dv)
    first, cursor = _read(connector, Cursor())
    assert first[people[5]].fields[MARKETING_FIELD] is True
    dv.environment.update(CONSENTS, row, {"msdynmkt_contactpointvalue": "person7@example.test"})
    real = dv.environment.audit_history
    delayed = {"on": True}

    def history(logical_name: str, record_id: str) -> list[dict[str, Any]]:
        return [] if delayed["on"] else real(logical_name, record_id)

    monkeypatch.setattr(dv.environment, "audit_history", history)
    moved, cursor = _read(connector, cursor)
    delayed["on"] = False  # the audit row has arrived
    later, _ = _read(connector, cursor)
    handed = {**moved, **later}
    assert people[5] in handed and handed[people[5]].fields[MARKETING_FIELD] is None, (
        "person5's purpose row moved away; the contact was never checked again"
    )
    assert handed[people[7]].fields[MARKETING_FIELD] is True


def test_a_history_holding_only_an_earlier_move_is_not_taken_for_the_latest(
    dv: DynamicsSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row moved twice; the history holds the first move, not the second (late): the
    address of the second move's start is in no history, so every contact is checked."""
    _audited(dv)
    people = _people(dv, COUNT)
    row = _row(dv, "person5@example.test")
    connector = _connector(dv)
    _, cursor = _read(connector, Cursor())
    dv.environment.update(CONSENTS, row, {"msdynmkt_contactpointvalue": "person7@example.test"})
    shown = len(dv.environment.audit_log)
    # The second edit a minute later: its audit row is not in the history yet.
    clock = dv.environment.clock
    monkeypatch.setattr(dv.environment, "clock", lambda: clock() + timedelta(minutes=1))
    dv.environment.update(CONSENTS, row, {"msdynmkt_contactpointvalue": "person9@example.test"})
    real = dv.environment.audit_history

    def history(logical_name: str, record_id: str) -> list[dict[str, Any]]:
        kept = {id(entry) for entry in dv.environment.audit_log[:shown]}
        return [entry for entry in real(logical_name, record_id) if id(entry) in kept]

    monkeypatch.setattr(dv.environment, "audit_history", history)
    moved, _ = _read(connector, cursor)
    assert [moved[people[n]].fields[MARKETING_FIELD] for n in (5, 7, 9)] == [None, None, True]
    assert set(moved) == set(people)  # every contact checked
