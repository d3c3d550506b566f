"""A deletion listing the engine left inside a sync batch (it commits pages of its own size; a
run ends between two: its budget spent, a retrieve failing, SIGKILL). The next listing asks sync
for the batch again, from the same time. GetUpdates.php answers "the changes after that time up
to the second of the 100th, that second whole": asked again later, the batch is not the set it
was. A live lead of it edited meanwhile leaves it and the batch reaches further; the last batch
takes in every change made since. A lead with an id below the cursor's may come in it, and must
not be left out as handed over: only a batch of one second (a past second loses records, never
gains one) leaves out the ids up to the cursor's; any other is listed whole again. A batch whose
last second is crowded (a mass deletion) hands that second over last, as a one-second batch of
its own, so a cut among its leads still moves on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_vtiger.sandbox.server import VtigerSandbox

from consentsync.sdk import CrmRecord, Cursor
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_vtiger_against_sandbox import connector_for

LEAD_FIELDS = ["email", "emailoptout", "firstname"]


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def _connector(sandbox: VtigerSandbox) -> Any:
    return connector_for(sandbox, read_deletions=True, sync_type="user")


def _cut(sandbox: VtigerSandbox, since: Cursor, pages: int, size: int = 25) -> tuple[list[CrmRecord], Cursor]:
    """A listing the engine stops after ``pages`` pages of ``size``: the records handed over,
    and the cursor it keeps (the last record's, with the run's upper bound)."""
    until = read_until()
    listing = _connector(sandbox).read_deletions("Leads", since, until, fields=LEAD_FIELDS)
    handed = [next(listing) for _ in range(pages * size)]
    listing.close()
    last = handed[-1]
    return handed, Cursor(last.modstamp, last.record_id, read_until=until)


def _rest(sandbox: VtigerSandbox, stored: Cursor, runs: int = 3) -> dict[str, CrmRecord]:
    """What the next runs list, each resuming as the engine does, until one ends."""
    listed: dict[str, CrmRecord] = {}
    for _ in range(runs):
        connector = _connector(sandbox)
        got = list(
            connector.read_deletions("Leads", connector.resume_from(stored), read_until(), LEAD_FIELDS)
        )
        assert [(r.modstamp, r.record_id) for r in got] == sorted((r.modstamp, r.record_id) for r in got)
        listed.update((r.record_id, r) for r in got)
        if connector.completed_cursor is None:
            break
        stored = connector.completed_cursor
    return listed


def test_a_batch_that_reaches_further_after_a_cut_is_listed_whole(sandbox: VtigerSandbox) -> None:
    """The reviewer's case: the first batch is 50 live leads and 50 converted ones; the listing
    is cut after 25; a live lead of the batch is edited, so the batch asked again leaves it out
    and reaches on to an older lead (the lowest id), opted out and converted later."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    late = crm.create("Leads", lastname="Late", email="late@example.test", emailoptout="1", at=past)
    live = [crm.create("Leads", lastname=f"Live {i}", at=past + dt.timedelta(seconds=i)) for i in range(50)]
    gone = [crm.create("Leads", lastname=f"Conv {i}", at=past) for i in range(50)]
    for i, lead in enumerate(gone):
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=50 + i))
    crm.convert_lead(late, at=past + dt.timedelta(seconds=200))

    handed, stored = _cut(sandbox, Cursor(), pages=1)
    assert late < stored.record_id  # an id the old listing left out as handed over
    crm.revise(live[0], firstname="Edited")

    rest = _rest(sandbox, stored)
    assert set(gone) - {r.record_id for r in handed} <= set(rest)
    assert late in rest, "a converted lead (opted out) was never listed: its no is lost"
    assert rest[late].fields["emailoptout"] == "1"


def test_a_lead_converted_after_a_cut_inside_the_last_batch_is_listed(sandbox: VtigerSandbox) -> None:
    """The batch cut was the last one: asked again, it holds the leads converted since, one of
    them older (a lower id) than the cursor's."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    old = crm.create("Leads", lastname="Old", email="old@example.test", at=past - dt.timedelta(seconds=10))
    history = [crm.create("Leads", lastname=f"H{i}", at=past) for i in range(60)]
    for n, lead in enumerate(history):
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=n))

    handed, stored = _cut(sandbox, Cursor(), pages=2)
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)  # before the look-back window
    crm.revise(old, emailoptout="1", at=moment)
    crm.convert_lead(old, at=moment + dt.timedelta(seconds=1))

    rest = _rest(sandbox, stored)
    assert set(history) - {r.record_id for r in handed} <= set(rest)
    assert old in rest and rest[old].fields["emailoptout"] == "1", "the old lead's no was lost"


def test_a_cut_inside_a_one_second_batch_leaves_out_what_was_handed_over(sandbox: VtigerSandbox) -> None:
    """A batch of one past second can only have lost leads since: the next listing leaves out
    the ids up to the cursor's, and retrieves only the rest (each run moves on)."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    leads = [crm.create("Leads", lastname=f"M{i}", emailoptout="1", at=past) for i in range(150)]
    for lead in leads:
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=5))

    handed, stored = _cut(sandbox, Cursor(), pages=2)
    before = sandbox.calls["retrieve"]
    rest = _rest(sandbox, stored)
    assert set(rest) == set(leads) - {r.record_id for r in handed}
    assert sandbox.calls["retrieve"] - before == len(rest) == 100


def test_a_one_second_batch_that_reaches_further_is_listed_whole(sandbox: VtigerSandbox) -> None:
    """A batch of one second, cut, then one of its leads revised (Vtiger acts on a converted
    lead): the second holds fewer than 100 changes now, so the batch asked again reaches on to
    later changes, where an older lead converted since may lie."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    old = crm.create("Leads", lastname="Old", email="old@example.test", at=past - dt.timedelta(seconds=10))
    leads = [crm.create("Leads", lastname=f"M{i}", at=past) for i in range(60)]
    for lead in leads:
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=5))

    handed, stored = _cut(sandbox, Cursor(), pages=1)
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)  # before the look-back window
    crm.revise(leads[-1], firstname="Edited", at=moment)  # it leaves the second: the batch shrinks
    crm.revise(old, emailoptout="1", at=moment)  # ... and the old lead, opted out and converted,
    crm.convert_lead(old, at=moment + dt.timedelta(seconds=1))  # joins it

    rest = _rest(sandbox, stored)
    assert set(leads) - {r.record_id for r in handed} <= set(rest)
    assert old in rest and rest[old].fields["emailoptout"] == "1", "the old lead's no was lost"


def test_a_crowded_last_second_is_handed_over_last_as_a_batch_of_its_own(sandbox: VtigerSandbox) -> None:
    """A batch of a few leads over some seconds and a mass deletion in its last second (more
    than sync's 100 rows): the last second's leads come last, stamped with that second, so a
    cut among them leaves out what was handed over (it is listed again from the second before);
    the earlier leads, stamped with the batch's first second, come first."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    early = [crm.create("Leads", lastname=f"E{i}", emailoptout="1", at=past) for i in range(10)]
    for i, lead in enumerate(early):
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=1 + i))
    crowd = [crm.create("Leads", lastname=f"C{i}", at=past) for i in range(200)]
    for lead in crowd:
        crm.delete(lead, at=past + dt.timedelta(seconds=30))

    first = list(_connector(sandbox).read_deletions("Leads", Cursor(), read_until(), fields=LEAD_FIELDS))
    assert [r.record_id for r in first] == sorted(early) + sorted(crowd)
    assert {r.modstamp for r in first[:10]} == {dt.datetime.fromtimestamp(2, dt.UTC)}
    assert {r.modstamp for r in first[10:]} == {(past + dt.timedelta(seconds=30)).replace(microsecond=0)}
    assert sandbox.calls["sync"] == 2  # the batch, then its last second (nothing more after it)

    # Cut among the crowd: the next listing retrieves only the rest of it.
    handed, stored = _cut(sandbox, Cursor(), pages=4)  # 10 early, 90 of the crowd
    before = sandbox.calls["retrieve"]
    rest = _rest(sandbox, stored)
    assert set(rest) == set(crowd) - {r.record_id for r in handed}
    assert sandbox.calls["retrieve"] - before == 110

    # Cut among the early leads: the batch is listed whole again.
    handed, stored = _cut(sandbox, Cursor(), pages=1, size=5)
    rest = _rest(sandbox, stored)
    assert set(rest) == set(early) | set(crowd)
