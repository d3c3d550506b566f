"""SuperOffice, ``latest_page_first: true``: a sweep begun again on today (every run after the
first) does not walk today's pages from the first consent id to find the few consents changed
since the last sweep.

``consentPerson/updatedDate`` restricts by date only, and a consent changed again keeps its low
id, so finding today's latest changes means walking every page of today each run (a day of
12,000 changes at ``page_size: 200``: 60 archive calls a run). Where the archive orders by the
updated time (SuperOffice does not document it: hence a setting, off by default), one page of
today newest first holds every change since the sweep's floor where it is not full or its oldest
row is older than the floor. Only a window holding more than a page of changes is walked by id.
By default the day is walked, the page never asked for. Each run here is made as the engine
makes it (``engine_run``)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from consentsync_superoffice.connector import SuperOfficeConnector
from consentsync_superoffice.sandbox.archive import ArchiveQuery
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

from consentsync.sdk import Cursor
from tests.connectors import test_superoffice_big_days
from tests.connectors.test_superoffice_big_days import engine_run
from tests.connectors.test_superoffice_updated_by_day import connector_for, consenting

PAGE = 3
BUSY = 30  # 10 pages of today


@pytest.fixture(params=[False, True], ids=["after-is-strict", "after-takes-its-day"])
def so(request: pytest.FixtureRequest) -> Iterator[SuperOfficeSandbox]:
    tenant = SuperOfficeTenant(default_legal_base=None, date_bounds_inclusive=request.param)
    with SuperOfficeSandbox(tenant) as server:
        yield server


@pytest.fixture
def latest_page_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs' connectors have ``latest_page_first: true``."""

    def shortcut(so: SuperOfficeSandbox, page_size: int, budget: int = 60) -> SuperOfficeConnector:
        connector = connector_for(so, page_size, budget)
        connector.config = connector.config.model_copy(update={"latest_page_first": True})
        return connector

    monkeypatch.setattr(test_superoffice_big_days, "connector_for", shortcut)


def _busy_today(so: SuperOfficeSandbox) -> tuple[list[int], Cursor]:
    """``BUSY`` persons consenting twenty minutes ago, a second apart, read whole by a first
    run: the persons and the cursor it kept."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    midnight = now.replace(hour=0, minute=0, second=0)
    if now - midnight < dt.timedelta(seconds=BUSY + 5):
        # The busy persons must all be today's and in the past (the first seconds of a day).
        time.sleep((midnight + dt.timedelta(seconds=BUSY + 5) - now).total_seconds())
    # Twenty minutes ago, but never yesterday: a run just after midnight failed here.
    start = max(now - dt.timedelta(minutes=20), midnight)
    people = [consenting(so, f"busy{i}", start + dt.timedelta(seconds=i)) for i in range(BUSY)]
    records, cursor, ended = engine_run(so, Cursor(), budget=1000, page_size=PAGE)
    assert ended and {int(r.record_id) for r in records} == set(people)
    return people, cursor


def _asked(so: SuperOfficeSandbox) -> list[ArchiveQuery]:
    asked: list[ArchiveQuery] = []
    so.after_archive_page = asked.append
    return asked


@pytest.mark.usefixtures("latest_page_first")
def test_a_run_after_a_busy_day_reads_todays_new_changes_without_walking_its_pages(
    so: SuperOfficeSandbox,
) -> None:
    people, cursor = _busy_today(so)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    # One of the busy persons withdraws (its consent keeps its low id), and a new person signs up.
    so.tenant.set_consent(people[3], "EMARKETING", "FORM", "WITHDRAWN", at=now)
    newcomer = consenting(so, "new", now)
    asked = _asked(so)
    records, cursor, ended = engine_run(so, cursor, budget=1000, page_size=PAGE)
    assert ended
    read = {int(r.record_id): r for r in records}
    assert {people[3], newcomer} <= set(read)
    assert read[people[3]].fields["LegalBase_EMARKETING"] == "WITHDRAWN"
    # The busy persons are not read again: none changed within the window before this sweep.
    assert set(read) == {people[3], newcomer}
    assert len(asked) <= 3, f"{len(asked)} archive calls: today's {BUSY // PAGE} pages were walked again"
    # And the next run, with nothing new, reads nothing and walks nothing either.
    asked.clear()
    again, _, ended = engine_run(so, cursor, budget=1000, page_size=PAGE)
    assert ended and len(asked) <= 3
    assert {int(r.record_id) for r in again} <= {people[3], newcomer}  # the look-back window


@pytest.mark.usefixtures("latest_page_first")
def test_more_changes_since_the_last_sweep_than_a_page_are_walked_and_none_is_lost(
    so: SuperOfficeSandbox,
) -> None:
    people, cursor = _busy_today(so)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    changed = people[2:9]  # seven low-id consents changed again: more than one page
    for person in changed:
        so.tenant.set_consent(person, "EMARKETING", "FORM", "WITHDRAWN", at=now)
    records, _, ended = engine_run(so, cursor, budget=1000, page_size=PAGE)
    assert ended
    read = {int(r.record_id): r for r in records}
    assert set(read) == set(changed)
    assert all(read[p].fields["LegalBase_EMARKETING"] == "WITHDRAWN" for p in changed)


@pytest.mark.usefixtures("latest_page_first")
def test_a_run_cut_while_handing_on_the_latest_page_asks_for_it_again_and_goes_on(
    so: SuperOfficeSandbox,
) -> None:
    """The budget runs out after the first person of the latest page: the next run asks for the
    latest page again (not the id walk of the whole day) and hands on the persons after it."""
    people, cursor = _busy_today(so)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    for person in (people[1], people[5]):
        so.tenant.set_consent(person, "EMARKETING", "FORM", "WITHDRAWN", at=now)
    # The old sweep's end (an archive call), the latest page, one person's consents: the budget.
    first, cursor, ended = engine_run(so, cursor, budget=3, page_size=PAGE)
    assert not ended and [int(r.record_id) for r in first] == [people[1]]
    asked = _asked(so)
    second, cursor, _ = engine_run(so, cursor, budget=3, page_size=PAGE)
    assert [int(r.record_id) for r in second][:1] == [people[5]]
    assert asked and all("desc" in query.order_by for query in asked), [q.where for q in asked]


def test_by_default_the_day_is_walked_and_no_newest_first_page_is_asked_for(so: SuperOfficeSandbox) -> None:
    """The shortcut relies on an order SuperOffice does not document: off unless configured. A
    run after a busy day walks today's pages by consent id and finds the low-id consent changed
    again and the newcomer."""
    assert connector_for(so, PAGE).config.latest_page_first is False
    people, cursor = _busy_today(so)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    so.tenant.set_consent(people[3], "EMARKETING", "FORM", "WITHDRAWN", at=now)
    newcomer = consenting(so, "new", now)
    asked = _asked(so)
    records, _, ended = engine_run(so, cursor, budget=1000, page_size=PAGE)
    assert ended
    read = {int(r.record_id): r for r in records}
    assert set(read) == {people[3], newcomer}
    assert read[people[3]].fields["LegalBase_EMARKETING"] == "WITHDRAWN"
    assert not any("desc" in query.order_by for query in asked), [q.order_by for q in asked]
    assert len(asked) > BUSY // PAGE, f"{len(asked)} archive calls: today's pages were not walked"
