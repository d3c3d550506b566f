"""Journeys view reads that outlast a run's call budget still finish, each run going on from the
position the last one handed over:

* a check of every contact (a consent row deleted or edited) that finds few contacts to hand
  over: the check's position goes with each page's last contact, so a run whose budget runs out
  before it finds one does not leave the next to start the check again;
* a full reload after the contacts' delta link was refused (expired), consent rows without
  change tracking: its records carry their own positions, not the refused link, so the next run
  goes on with the reload instead of being refused again and reloading from the first contact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import Cursor
from tests.connectors.test_dynamics_journeys_consent_changes import (
    CONSENTS,
    MARKETING_FIELD,
    PROFILING_FIELD,
    _connector,
    _people,
    _read,
    _row,
)
from tests.connectors.test_dynamics_journeys_cut_reads import _runs


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    with DynamicsSandbox() as server:
        yield server


# A run's set-up (metadata, both deltas, the contacts' catch-up) takes 9 calls, a page of the check
# 3 (its contacts, then their rows: two pages of them): 13 calls a run check a page, 16 two.
@pytest.mark.parametrize("budget", [13, 16])
def test_a_check_of_every_contact_that_finds_few_goes_on_under_a_small_budget(
    dv: DynamicsSandbox, budget: int
) -> None:
    people = _people(dv, 24)
    for n in range(24):
        _row(dv, f"person{n}@example.test", MARKETING_FIELD)
        _row(dv, f"person{n}@example.test", PROFILING_FIELD)
    first, cursor = _read(_connector(dv), Cursor())
    # A row of the contact the check reaches last deleted: the only contact it hands over.
    last = people.index(list(first)[-1])
    lost = next(
        row["msdynmkt_contactpointconsent4id"]
        for row in dv.environment.records(CONSENTS)
        if row["msdynmkt_contactpointvalue"] == f"person{last}@example.test"
    )
    dv.environment.delete(CONSENTS, lost)
    finished, seen, cursor, runs = _runs(dv, cursor, budget=budget, runs=12)
    assert finished and people[last] in seen, f"{runs} runs, none finished; handed over: {len(seen)} of 24"
    again, _ = _read(_connector(dv), cursor)
    assert again == {}  # the check is done


def test_a_reload_after_a_refused_link_longer_than_a_run_goes_on_and_finishes(dv: DynamicsSandbox) -> None:
    dv.environment.tables[CONSENTS].change_tracking = False  # contacts alone by their delta link
    people = _people(dv, 30)
    finished, _, stored, _ = _runs(dv, Cursor(), budget=100, runs=1)
    assert finished and stored.token
    dv.environment.update("contact", people[-1], {"lastname": "Changed"})
    dv.expire_delta_tokens()  # the daemon was down longer than the retention period
    # A run takes a new delta link first (the initial change-tracking read pages through every
    # contact: 11 calls), then reads about three pages of contacts, each looked up.
    finished, seen, cursor, runs = _runs(dv, stored, budget=24, runs=12)
    assert finished and set(people) <= seen, f"{runs} runs, none finished; handed over: {len(seen)} of 30"
    assert cursor.token and cursor.token != stored.token
