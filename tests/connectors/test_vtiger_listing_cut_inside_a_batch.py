"""A deletion listing the engine left inside a sync batch (it commits pages of its own size; a
run ends between two: its budget spent, a retrieve failing, SIGKILL). The next listing asks sync
for the batch again, from the same time. GetUpdates.php answers "the changes after that time up
to the second of the 100th, that second whole": asked again later, the batch is not the set it
was. A live lead of it edited meanwhile leaves it and the batch reaches further; the last batch
takes in every change made since. A lead with an id below the cursor's may come in it, and must
not be left out as handed over: only a batch of one second (a past second loses records, never
gains one) leaves out the ids up to the cursor's; any other is listed whole again. A batch whose
last second is crowded (a mass deletion) hands that second over last, as a one-second batch of
its own, so a cut among its leads still moves on.

The cursor the engine keeps is the connector's own (``completed_cursor``, record by record): its
token names the batch's end as listed (its last second visible whole), so a batch of several
seconds asked again leaves out the ids handed over up to it and lists those changed since after
the rest: each run moves on however small its budget. Every test runs with that cursor ("own")
and with a bare one (stored by an earlier version: "bare")."""

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


@pytest.fixture(params=["own", "bare"])
def kept(request: pytest.FixtureRequest) -> str:
    """Which cursor a cut leaves: the connector's own, or a bare one (an earlier version's)."""
    return str(request.param)


def _cut(
    sandbox: VtigerSandbox, since: Cursor, pages: int, size: int = 25, kept: str = "own"
) -> tuple[list[CrmRecord], Cursor]:
    """A listing the engine stops after ``pages`` pages of ``size``: the records handed over,
    and the cursor it keeps: the connector's own for the last record (``kept="own"``), or a
    bare one, the last record's position with the run's upper bound (``"bare"``)."""
    until = read_until()
    connector = _connector(sandbox)
    listing = connector.read_deletions("Leads", connector.resume_from(since), until, fields=LEAD_FIELDS)
    handed = [next(listing) for _ in range(pages * size)]
    own = connector.completed_cursor
    listing.close()
    last = handed[-1]
    if kept == "bare":
        return handed, Cursor(last.modstamp, last.record_id, read_until=until)
    assert own is not None and (own.modstamp, own.record_id) == (last.modstamp, last.record_id)
    return handed, own


def _rest(
    sandbox: VtigerSandbox, stored: Cursor, runs: int = 3, later: dt.timedelta = dt.timedelta(0)
) -> dict[str, CrmRecord]:
    """What the next runs list (``later`` than now), each resuming as the engine does, until one
    ends."""
    listed: dict[str, CrmRecord] = {}
    for _ in range(runs):
        connector = _connector(sandbox)
        until = read_until() + later
        got = list(connector.read_deletions("Leads", connector.resume_from(stored), until, LEAD_FIELDS))
        assert [(r.modstamp, r.record_id) for r in got] == sorted((r.modstamp, r.record_id) for r in got)
        listed.update((r.record_id, r) for r in got)
        if connector.completed_cursor is None:
            break
        stored = connector.completed_cursor
    return listed


def _half_converted_batch(crm: Any) -> tuple[str, list[str], list[str]]:
    """A first batch of 50 live leads and 50 converted ones, three hours old, and an older lead
    (the lowest id), opted out, converted after them: (that lead, the live ones, the converted
    ones)."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    late = crm.create("Leads", lastname="Late", email="late@example.test", emailoptout="1", at=past)
    live = [crm.create("Leads", lastname=f"Live {i}", at=past + dt.timedelta(seconds=i)) for i in range(50)]
    gone = [crm.create("Leads", lastname=f"Conv {i}", at=past) for i in range(50)]
    for i, lead in enumerate(gone):
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=50 + i))
    crm.convert_lead(late, at=past + dt.timedelta(seconds=200))
    return late, live, gone


def test_a_batch_that_reaches_further_after_a_cut_is_listed_whole(sandbox: VtigerSandbox, kept: str) -> None:
    """The reviewer's case: the first batch is 50 live leads and 50 converted ones; the listing
    is cut after 25; a live lead of the batch is edited, so the batch asked again leaves it out
    and reaches on to an older lead (the lowest id), opted out and converted later."""
    crm = sandbox.crm
    late, live, gone = _half_converted_batch(crm)

    handed, stored = _cut(sandbox, Cursor(), pages=1, kept=kept)
    assert late < stored.record_id  # an id the old listing left out as handed over
    crm.revise(live[0], firstname="Edited")

    rest = _rest(sandbox, stored)
    assert set(gone) - {r.record_id for r in handed} <= set(rest)
    assert late in rest, "a converted lead (opted out) was never listed: its no is lost"
    assert rest[late].fields["emailoptout"] == "1"


def test_a_lead_converted_after_a_cut_inside_the_last_batch_is_listed(
    sandbox: VtigerSandbox, kept: str
) -> None:
    """The batch cut was the last one: asked again, it holds the leads converted since, one of
    them older (a lower id) than the cursor's."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    old = crm.create("Leads", lastname="Old", email="old@example.test", at=past - dt.timedelta(seconds=10))
    history = [crm.create("Leads", lastname=f"H{i}", at=past) for i in range(60)]
    for n, lead in enumerate(history):
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=n))

    handed, stored = _cut(sandbox, Cursor(), pages=2, kept=kept)
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)  # before the look-back window
    crm.revise(old, emailoptout="1", at=moment)
    crm.convert_lead(old, at=moment + dt.timedelta(seconds=1))

    rest = _rest(sandbox, stored)
    assert set(history) - {r.record_id for r in handed} <= set(rest)
    assert old in rest and rest[old].fields["emailoptout"] == "1", "the old lead's no was lost"


def test_a_cut_inside_a_one_second_batch_leaves_out_what_was_handed_over(
    sandbox: VtigerSandbox, kept: str
) -> None:
    """A batch of one past second can only have lost leads since: the next listing leaves out
    the ids up to the cursor's, and retrieves only the rest (each run moves on)."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    leads = [crm.create("Leads", lastname=f"M{i}", emailoptout="1", at=past) for i in range(150)]
    for lead in leads:
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=5))

    handed, stored = _cut(sandbox, Cursor(), pages=2, kept=kept)
    before = sandbox.calls["retrieve"]
    rest = _rest(sandbox, stored)
    assert set(rest) == set(leads) - {r.record_id for r in handed}
    assert sandbox.calls["retrieve"] - before == len(rest) == 100


def test_a_one_second_batch_that_reaches_further_is_listed_whole(sandbox: VtigerSandbox, kept: str) -> None:
    """A batch of one second, cut, then one of its leads revised (Vtiger acts on a converted
    lead): the second holds fewer than 100 changes now, so the batch asked again reaches on to
    later changes, where an older lead converted since may lie."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    old = crm.create("Leads", lastname="Old", email="old@example.test", at=past - dt.timedelta(seconds=10))
    leads = [crm.create("Leads", lastname=f"M{i}", at=past) for i in range(60)]
    for lead in leads:
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=5))

    handed, stored = _cut(sandbox, Cursor(), pages=1, kept=kept)
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)  # before the look-back window
    crm.revise(leads[-1], firstname="Edited", at=moment)  # it leaves the second: the batch shrinks
    crm.revise(old, emailoptout="1", at=moment)  # ... and the old lead, opted out and converted,
    crm.convert_lead(old, at=moment + dt.timedelta(seconds=1))  # joins it

    rest = _rest(sandbox, stored)
    assert set(leads) - {r.record_id for r in handed} <= set(rest)
    assert old in rest and rest[old].fields["emailoptout"] == "1", "the old lead's no was lost"


def test_a_crowded_last_second_is_handed_over_last_as_a_batch_of_its_own(
    sandbox: VtigerSandbox, kept: str
) -> None:
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
    handed, stored = _cut(sandbox, Cursor(), pages=4, kept=kept)  # 10 early, 90 of the crowd
    before = sandbox.calls["retrieve"]
    rest = _rest(sandbox, stored)
    assert set(rest) == set(crowd) - {r.record_id for r in handed}
    assert sandbox.calls["retrieve"] - before == 110

    # Cut among the early leads: with its own cursor, the next listing leaves out what was
    # handed over (the crowd, changed after the part cut, comes after the rest); a bare cursor
    # lists the batch whole again.
    handed, stored = _cut(sandbox, Cursor(), pages=1, size=5, kept=kept)
    rest = _rest(sandbox, stored)
    again = set() if kept == "own" else {r.record_id for r in handed}
    assert set(rest) == set(early) - {r.record_id for r in handed} | again | set(crowd)


def _run(sandbox: VtigerSandbox, stored: Cursor, at_most: int) -> tuple[list[CrmRecord], Cursor | None]:
    """One run's listing, resumed as the engine resumes it and cut after ``at_most`` records
    (its budget spent): the records handed over and the cursor the engine keeps."""
    connector = _connector(sandbox)
    listing = connector.read_deletions("Leads", connector.resume_from(stored), read_until(), LEAD_FIELDS)
    handed = [record for _, record in zip(range(at_most), listing, strict=False)]
    cursor = connector.completed_cursor
    listing.close()
    return handed, cursor


def _after(record: CrmRecord, cursor: Cursor) -> bool:
    """Whether ``record`` comes past ``cursor`` under a later stamp (a batch of its own)."""
    return record.modstamp > cursor.modstamp and cursor.is_before(record.modstamp, record.record_id)


def test_a_cut_inside_a_batch_of_several_seconds_retrieves_only_the_rest(sandbox: VtigerSandbox) -> None:
    """The reviewer's case (d9eca48's regression): a batch of 60 leads converted a second apart
    (fewer than sync's 100 rows: nothing splits it), cut after 25. Resumed from the connector's
    own cursor, the listing retrieves the 35 others only, and no sync call more than the batch."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    leads = [crm.create("Leads", lastname=f"S{i}", emailoptout="1", at=past) for i in range(60)]
    for n, lead in enumerate(leads):
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=1 + n))

    handed, stored = _cut(sandbox, Cursor(), pages=1)
    assert stored.token is not None
    sandbox.reset_counters()
    rest = _rest(sandbox, stored, runs=1)
    assert set(rest) == set(leads) - {r.record_id for r in handed}
    assert sandbox.calls["retrieve"] == len(rest) == 35
    assert sandbox.calls["sync"] == 1
    assert all(r.fields["emailoptout"] == "1" for r in rest.values())


def test_leads_that_join_a_cut_batch_come_after_the_rest(sandbox: VtigerSandbox) -> None:
    """A cut batch of 50 live leads and 50 converted ones; a live lead of it is edited, so asked
    again it reaches on to an older lead (an id below the cursor's), opted out and converted
    later. The listing leaves out the 25 leads handed over, lists the 25 others, then the old
    lead, stamped after them (changed after the batch's end as listed): 26 retrieves."""
    crm = sandbox.crm
    late, live, gone = _half_converted_batch(crm)

    handed, stored = _cut(sandbox, Cursor(), pages=1)
    assert late < str(stored.record_id)
    crm.revise(live[0], firstname="Edited")
    sandbox.reset_counters()
    rest = _rest(sandbox, stored, runs=1)
    assert set(rest) == set(gone) - {r.record_id for r in handed} | {late}
    assert sandbox.calls["retrieve"] == 26
    assert rest[late].fields["emailoptout"] == "1"
    assert _after(rest[late], stored) and list(rest)[-1] == late


def test_each_run_moves_on_however_small_its_budget(sandbox: VtigerSandbox) -> None:
    """Runs each cut after 10 leads, and between two runs a live lead of the batch is edited (it
    leaves the batch, which reaches further) and an older lead (a low id) converted: every run
    hands over leads no run handed over before, no lead handed over is retrieved again,
    and every converted lead is listed."""
    crm = sandbox.crm
    now = dt.datetime.now(dt.UTC)
    past = now - dt.timedelta(hours=3)
    older = [crm.create("Leads", lastname=f"O{i}", emailoptout="1", at=past) for i in range(6)]
    live = [crm.create("Leads", lastname=f"L{i}", at=past + dt.timedelta(seconds=i)) for i in range(40)]
    leads = [crm.create("Leads", lastname=f"C{i}", at=past) for i in range(60)]
    for n, lead in enumerate(leads):
        crm.convert_lead(lead, at=past + dt.timedelta(seconds=40 + n))

    stored, listed, runs = Cursor(), list[str](), 0
    sandbox.reset_counters()
    while True:
        runs += 1
        assert runs < 30, f"no end: {len(listed)} listed"
        handed, cursor = _run(sandbox, stored, at_most=10)
        assert not {r.record_id for r in handed} & set(listed), "a lead handed over was listed again"
        listed += [r.record_id for r in handed]
        assert cursor is not None
        if cursor.record_id is None:  # past the last batch: the listing ended
            break
        assert handed, "a run handed nothing over"
        stored = cursor
        if runs <= len(older):  # the batch changes between two runs
            moment = now - dt.timedelta(minutes=40 - runs)  # before the look-back window
            crm.revise(live[runs], firstname="Edited", at=moment)
            crm.convert_lead(older[runs - 1], at=moment + dt.timedelta(seconds=1))
    assert set(listed) == set(leads) | set(older)
    # Each lead retrieved once; a run cut (killed) had retrieved the lead after its last one.
    assert sandbox.calls["retrieve"] == len(listed) + runs - 1


def test_a_conversion_committed_late_inside_a_cut_batch_is_listed(sandbox: VtigerSandbox) -> None:
    """A batch whose last seconds lie inside the look-back window when it is listed: a lead's
    conversion stamped there may commit later (Vtiger stamps a save before its transaction
    commits). The cursor's token names only the seconds before the window as listed whole, so
    asked again (by runs ten minutes later, whose look-back no longer reaches back there), the
    batch lists that lead (an id below the cursor's) after the rest."""
    crm = sandbox.crm
    now = dt.datetime.now(dt.UTC)
    slow = crm.create(
        "Leads", lastname="Slow", email="slow@example.test", emailoptout="1", at=now - dt.timedelta(hours=1)
    )
    leads = [crm.create("Leads", lastname=f"W{i}", at=now - dt.timedelta(hours=1)) for i in range(60)]
    start = now - dt.timedelta(minutes=5, seconds=30)  # the last 35 s or so: inside the window
    for n, lead in enumerate(leads):
        crm.convert_lead(lead, at=start + dt.timedelta(seconds=n))
    crm.convert_lead(slow, at=start + dt.timedelta(seconds=50))
    sandbox.crm._lookup(slow).pending = True  # its transaction not committed yet

    handed, stored = _cut(sandbox, Cursor(), pages=1)
    assert slow < str(stored.record_id)
    crm.commit_late(slow)
    rest = _rest(sandbox, stored, later=dt.timedelta(minutes=10))
    assert set(leads) - {r.record_id for r in handed} <= set(rest)
    assert slow in rest and rest[slow].fields["emailoptout"] == "1", "the slow lead's no was lost"


def test_a_listing_from_a_look_back_start_hands_no_cursor_behind_the_stored_one(
    sandbox: VtigerSandbox,
) -> None:
    """A listing resumed from a look-back start (the stored position lies inside the window)
    lists again leads handed over before: cut among them, it hands the engine no cursor (the
    engine keeps the stored one: it never moves back); past them, it does."""
    crm = sandbox.crm
    now = dt.datetime.now(dt.UTC)
    leads = [crm.create("Leads", lastname=f"R{i}", at=now - dt.timedelta(hours=1)) for i in range(60)]
    for n, lead in enumerate(leads[:40]):
        crm.convert_lead(lead, at=now - dt.timedelta(seconds=120 - n))
    connector = _connector(sandbox)
    first = list(connector.read_deletions("Leads", Cursor(), read_until(), LEAD_FIELDS))
    assert {r.record_id for r in first} == set(leads[:40])
    stored = connector.completed_cursor
    assert stored is not None and stored.record_id is None
    for n, lead in enumerate(leads[40:]):
        crm.convert_lead(lead, at=now - dt.timedelta(seconds=60 - n))

    connector = _connector(sandbox)
    start = connector.resume_from(stored)
    assert start.modstamp is not None and stored.modstamp is not None and start.modstamp < stored.modstamp
    listing = connector.read_deletions("Leads", start, read_until(), LEAD_FIELDS)
    behind = [(record, connector.completed_cursor) for _, record in zip(range(30), listing, strict=False)]
    assert all(cursor is None for _, cursor in behind), "a cursor behind the stored one"
    rest = list(listing)
    assert {r.record_id for r, _ in behind} | {r.record_id for r in rest} == set(leads)
    assert connector.completed_cursor is not None and connector.completed_cursor.modstamp > stored.modstamp
