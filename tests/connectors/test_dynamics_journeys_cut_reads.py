"""The Journeys view's reads that take more than a run: a first read, and a check of every contact
(a consent row deleted or edited), keep their position in the cursor's token, which the engine
stores with every page, so a run stopped by its budget, a crash or SIGKILL loses only its last
page, and the next one goes on from there. A consent row edited by someone else may have left
another address, which the delta does not name: the contact it left is handed over too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import BudgetExhausted, Cursor
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.connectors.test_dynamics_journeys_consent_changes import (
    CONSENTS,
    FIELDS,
    JOURNEYS,
    MARKETING_FIELD,
    _connector,
    _people,
    _read,
    _row,
)


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    with DynamicsSandbox() as server:
        yield server


def _runs(
    dv: DynamicsSandbox, cursor: Cursor, budget: int, runs: int = 8
) -> tuple[bool, set[str], Cursor, int]:
    """Runs under ``budget.per_run``, each from the cursor the engine would have kept: the one
    handed over with the last record (a page of one), else that record's position with the
    token the read started from; the read's last cursor where it ended. Whether a run finished,
    the records ever handed over, the cursor kept, the runs made."""
    seen: set[str] = set()
    for run in range(1, runs + 1):
        limits = {"page_size": 3, "budget": {"per_run": budget}}
        settings = connector_settings(dv.connection_settings(), limits)
        connector = DynamicsConnector("dyn-journeys", settings)
        connector.completed_cursor = None
        try:
            for record in connector.read_changes(JOURNEYS, FIELDS, cursor, read_until()):
                seen.add(record.record_id)
                cursor = connector.completed_cursor or Cursor(record.modstamp, record.record_id, cursor.token)
        except BudgetExhausted:
            continue
        if connector.completed_cursor is not None:
            return True, seen, connector.completed_cursor, run
    return False, seen, cursor, runs


def test_a_first_read_longer_than_a_runs_budget_goes_on_and_finishes(dv: DynamicsSandbox) -> None:
    people = _people(dv, 12)
    finished, seen, _, _ = _runs(dv, Cursor(), budget=14)
    assert finished and set(people) <= seen, (
        f"8 runs, none finished; contacts ever read: {len(seen & set(people))} of {len(people)}"
    )


def test_a_check_of_every_contact_longer_than_a_runs_budget_goes_on_and_finishes(dv: DynamicsSandbox) -> None:
    people = _people(dv, 12)
    rows = [_row(dv, f"person{n}@example.test") for n in range(12)]
    _, cursor = _read(_connector(dv), Cursor())
    dv.environment.delete(CONSENTS, rows[11])  # its id alone: every contact is checked again
    finished, seen, cursor, runs = _runs(dv, cursor, budget=14)
    assert finished and people[11] in seen, f"{runs} runs, none finished; checked: {len(seen)} of 12"
    again, _ = _read(_connector(dv), cursor)
    assert again == {}  # the check is done: nothing more to hand over


def test_a_preference_centre_row_moved_to_another_address_hands_over_the_contact_it_left(
    dv: DynamicsSandbox,
) -> None:
    people = _people(dv)
    row = _row(dv, "person5@example.test")  # the person unsubscribed in Journeys' preference centre
    connector = _connector(dv)
    first, cursor = _read(connector, Cursor())
    assert first[people[5]].fields[MARKETING_FIELD] is True
    # A CRM user edits the row's address (a typo fix on the wrong row, a clean-up).
    dv.environment.update(CONSENTS, row, {"msdynmkt_contactpointvalue": "person7@example.test"})
    moved, cursor = _read(connector, cursor)
    assert people[7] in moved and moved[people[7]].fields[MARKETING_FIELD] is True
    assert people[5] in moved, (
        "person5's address lost its Opted-out row, but its contact was not handed over: the view "
        "still says the row is there, so the person's no is never pushed again"
    )
    assert moved[people[5]].fields[MARKETING_FIELD] is None
    assert _read(connector, cursor)[0] == {}


def test_a_row_switched_to_another_channel_hands_over_the_contact_it_left(dv: DynamicsSandbox) -> None:
    people = _people(dv)
    row = _row(dv, "person2@example.test")
    connector = _connector(dv)
    _, cursor = _read(connector, Cursor())
    # Made a Text Message row, its value a phone number: it names no address any more.
    dv.environment.update(
        CONSENTS, row, {"msdynmkt_contactpointtype": 534120001, "msdynmkt_contactpointvalue": "+15550100"}
    )
    switched, _ = _read(connector, cursor)
    assert switched[people[2]].fields[MARKETING_FIELD] is None
