"""The SuperOffice connector reads the ConsentPurpose archive live, over HTTPS against the sandbox:
rows that move between two page calls (a consent changed again leaves its second, one committed
late enters it, one re-stamped within it changes place) never push an unread row out of sight,
however many rows one second holds: a day's pages are walked by consent id, a key a row keeps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pytest
from consentsync_superoffice import SuperOfficeConnector
from consentsync_superoffice.sandbox.archive import ArchiveQuery
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

from consentsync.sdk import CrmRecord, Cursor
from tests.connectors.against_sandbox import connector_settings, read_until

FIELDS = ["Email", "LegalBase_EMARKETING"]
MS = dt.timedelta(milliseconds=1)


@pytest.fixture
def so() -> Iterator[SuperOfficeSandbox]:
    # Fractions of a second kept (and sorted by) but not shown; no default consent, so each
    # person has one archive row: its e-marketing consent.
    with SuperOfficeSandbox(SuperOfficeTenant(keep_fractions=True, default_legal_base=None)) as server:
        yield server


def connector_for(so: SuperOfficeSandbox, page_size: int) -> SuperOfficeConnector:
    signed_in = {
        "base_url": so.tenant_url,
        "auth": "token",
        "access_token": so.issue_token(),
        "ca_bundle": str(so.ca_cert_path),
    }
    return SuperOfficeConnector("so-test", connector_settings(signed_in, {"page_size": page_size}))


def consenting(so: SuperOfficeSandbox, name: str, at: dt.datetime) -> int:
    person = so.tenant.create_person("P", name, f"{name}@example.test", at=at)
    so.tenant.set_consent(person.id, "EMARKETING", "FORM", "CONSENT", at=at)
    return person.id


def after_call(so: SuperOfficeSandbox, number: int, users: Callable[[], None]) -> list[ArchiveQuery]:
    """Users act once the ``number``-th archive page is read, before the connector asks the next."""
    asked: list[ArchiveQuery] = []

    def hook(query: ArchiveQuery) -> None:
        asked.append(query)
        if len(asked) == number:
            users()

    so.after_archive_page = hook
    return asked


def read_all(connector: SuperOfficeConnector, since: Cursor) -> list[CrmRecord]:
    return list(connector.read_changes("Person", FIELDS, since, read_until()))


def the_next_run(connector: SuperOfficeConnector, first: list[CrmRecord]) -> list[CrmRecord]:
    """The next incremental read after ``first``: from its last record, less the look-back, as
    the engine resumes."""
    return read_all(connector, connector.resume_from(Cursor(first[-1].modstamp, first[-1].record_id)))


def test_a_held_person_changed_between_two_pages_pushes_no_unread_one_out(so: SuperOfficeSandbox) -> None:
    # An hour ago (beyond the look-back): two persons, then four in one second, in person order
    # by their hidden fractions. A page of four ends inside that second, keeping two back.
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    before = [consenting(so, f"b{i}", moment - dt.timedelta(seconds=1)) for i in range(2)]
    crowd = [consenting(so, f"c{i}", moment + (100 + 100 * i) * MS) for i in range(4)]
    held = crowd[0]
    # Between the first and the second page the first kept-back person withdraws: that row
    # leaves the second (for now), and every later row of it moves up one place.
    asked = after_call(so, 1, lambda: so.tenant.set_consent(held, "EMARKETING", "EMAIL", "WITHDRAWN"))
    connector = connector_for(so, page_size=4)
    first = read_all(connector, Cursor())
    assert len(asked) > 1, "the users acted between two page calls"
    second = the_next_run(connector, first)
    read = [int(r.record_id) for r in first + second]
    assert set(before + crowd) <= set(read), f"persons never read: {set(before + crowd) - set(read)}"
    withdrawn = [r for r in first if r.record_id == str(held)]
    assert withdrawn and withdrawn[-1].fields["LegalBase_EMARKETING"] == "WITHDRAWN"
    assert withdrawn[-1].modstamp > moment + dt.timedelta(minutes=30), "read again at its new second"
    assert all(not query.skip for query in asked), "no page counts rows"


MOVES = ("first_ones_leave", "last_ones_leave", "first_goes_last", "last_goes_first", "one_enters")


@pytest.mark.parametrize("move", MOVES)
@pytest.mark.parametrize("call", [1, 2, 3, 4])
def test_a_crowded_second_loses_no_row_whatever_moves_between_calls(
    so: SuperOfficeSandbox, move: str, call: int
) -> None:
    # An hour ago: two persons, then eleven in one second (more than two pages of four), their
    # hidden fractions in the reverse of their person order, then one more a second later; and
    # one a minute ago, so the next run's look-back does not reach back to that hour.
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    before = [consenting(so, f"b{i}", moment - dt.timedelta(seconds=1)) for i in range(2)]
    crowd = [consenting(so, f"c{i}", moment + (900 - 50 * i) * MS) for i in range(11)]
    after = consenting(so, "after", moment + dt.timedelta(seconds=1))
    recent = consenting(so, "recent", moment + dt.timedelta(minutes=59))
    expected = {*before, *crowd, after, recent}
    withdrawn: list[int] = []

    def users() -> None:
        tenant = so.tenant
        if move == "first_ones_leave":  # first in fraction order, and first in person order
            withdrawn.extend([crowd[-1], crowd[0]])
        elif move == "last_ones_leave":  # last but one in fraction order, and in person order
            withdrawn.extend([crowd[-2], crowd[1]])
        elif move == "first_goes_last":  # re-stamped within the second: other places
            tenant.set_consent(crowd[-1], "EMARKETING", "MANUAL", "CONSENT", at=moment + 990 * MS)
        elif move == "last_goes_first":
            tenant.set_consent(crowd[0], "EMARKETING", "MANUAL", "CONSENT", at=moment + 10 * MS)
        else:  # a save stamped in that second commits only now (a higher person id)
            tenant.clock = lambda: moment + 500 * MS
            late = tenant.begin_late_person(
                "L", "late", "late@example.test", [("EMARKETING", "FORM", "CONSENT", "")]
            )
            tenant.clock = lambda: dt.datetime.now(dt.UTC)
            tenant.commit_late(late.id)
            expected.add(late.id)
        for person in withdrawn:
            tenant.set_consent(person, "EMARKETING", "EMAIL", "WITHDRAWN")

    asked = after_call(so, call, users)
    connector = connector_for(so, page_size=4)
    first = read_all(connector, Cursor())
    assert len(asked) > call, "the users acted between two page calls"
    second = the_next_run(connector, first)
    read = {int(r.record_id) for r in first + second}
    assert expected <= read, f"persons never read: {sorted(expected - read)}"
    for person in withdrawn:
        records = [r for r in first if r.record_id == str(person)]
        assert records and records[-1].fields["LegalBase_EMARKETING"] == "WITHDRAWN", person
    keys = [(r.modstamp, int(r.record_id)) for r in first]
    assert keys == sorted(keys), "the cursor only moves forward"


def test_a_second_that_does_not_move_is_read_whole_and_resumable(so: SuperOfficeSandbox) -> None:
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    crowd = [consenting(so, f"c{i}", moment + (900 - 50 * i) * MS) for i in range(11)]
    connector = connector_for(so, page_size=4)
    records = read_all(connector, Cursor())
    assert [int(r.record_id) for r in records] == crowd  # once each, in person order
    middle = records[5]
    rest = list(
        connector.read_changes("Person", FIELDS, Cursor(middle.modstamp, middle.record_id), read_until())
    )
    assert [r.record_id for r in rest] == [r.record_id for r in records[6:]]


def test_a_read_costs_a_call_a_page_of_each_day_with_changes(so: SuperOfficeSandbox) -> None:
    # Yesterday noon, one person a second: thirty rows at ten a page are the first change, four
    # pages of that day (the last one empty: the third was full), and the first change after it
    # (none). Pages never overlap: each starts after the last consent id read.
    noon = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(hours=12)
    people = [consenting(so, f"p{i}", noon + dt.timedelta(seconds=i)) for i in range(30)]
    so.reset_counters()
    records = list(connector_for(so, page_size=10).read_changes("Person", FIELDS, Cursor(), read_until()))
    assert [int(r.record_id) for r in records] == people
    assert so.calls["archive"] == 6 and so.calls["get_consent_infos"] == 30
