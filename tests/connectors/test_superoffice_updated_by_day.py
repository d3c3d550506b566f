"""consentPerson/updatedDate is a ConsentPurpose archive column of restriction type ``date``
(ConsentPurpose provider reference), for which SuperOffice uses "only the date part" (Archive
Provider Restriction Types; its operators: before, date, after, dateBetween, ...). The sandbox
compares it so; the connector asks the server for whole days, cuts the seconds itself and walks
each day's pages by consent id: a change made today is read today, a day holding more than a page
ends, and no change is lost or read twice when rows move between two page calls."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest
from consentsync_superoffice import SuperOfficeConnector
from consentsync_superoffice.sandbox.archive import ArchiveQuery
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

from consentsync.sdk import Action, BudgetExhausted, ConnectorError, CrmRecord, Cursor, Fault
from tests.connectors.against_sandbox import connector_settings, read_until

FIELDS = ["Email", "LegalBase_EMARKETING"]


def _midnight(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


TODAY = _midnight(dt.datetime.now(dt.UTC))


@pytest.fixture(params=[False, True], ids=["after-is-strict", "after-takes-its-day"])
def so(request: pytest.FixtureRequest) -> Iterator[SuperOfficeSandbox]:
    # SuperOffice does not say whether `after`/`before` take their own day: either way.
    tenant = SuperOfficeTenant(default_legal_base=None, date_bounds_inclusive=request.param)
    with SuperOfficeSandbox(tenant) as server:
        yield server


def connector_for(so: SuperOfficeSandbox, page_size: int, budget: int = 60) -> SuperOfficeConnector:
    signed_in = {
        "base_url": so.tenant_url,
        "auth": "token",
        "access_token": so.issue_token(),
        "ca_bundle": str(so.ca_cert_path),
    }
    layer = {"page_size": page_size, "budget": {"per_run": budget}}
    return SuperOfficeConnector("so-test", connector_settings(signed_in, layer))


def consenting(so: SuperOfficeSandbox, name: str, at: dt.datetime, legal: str = "CONSENT") -> int:
    person = so.tenant.create_person("P", name, f"{name}@example.test", at=at)
    so.tenant.set_consent(person.id, "EMARKETING", "FORM", legal, at=at)
    return person.id


def read(connector: SuperOfficeConnector, since: Cursor = Cursor()) -> list[CrmRecord]:  # noqa: B008
    return list(connector.read_changes("Person", FIELDS, since, read_until()))


def recorded_queries(so: SuperOfficeSandbox) -> list[ArchiveQuery]:
    asked: list[ArchiveQuery] = []
    so.after_archive_page = asked.append
    return asked


def test_a_withdrawal_made_a_minute_ago_is_read_today(so: SuperOfficeSandbox) -> None:
    # `updatedDate lt '<now>'` on a date column leaves today out: a withdrawal would wait for
    # midnight.
    withdrew = consenting(so, "w", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1), "WITHDRAWN")
    records = read(connector_for(so, 10))
    assert [r.record_id for r in records] == [str(withdrew)]
    assert records[0].fields["LegalBase_EMARKETING"] == "WITHDRAWN"
    # And the next run, resuming from it less the look-back, reads it again (once), nothing else.
    connector = connector_for(so, 10)
    again = read(connector, connector.resume_from(Cursor(records[0].modstamp, records[0].record_id)))
    assert [r.record_id for r in again] == [str(withdrew)]


def test_a_day_holding_more_than_a_page_of_changes_is_read_once_and_the_read_ends(
    so: SuperOfficeSandbox,
) -> None:
    # Yesterday, six persons in six seconds; pages of four. A page ending inside the day must not
    # send the read back to that day's start for ever (`ge '<last second>'` is that whole day).
    start = TODAY - dt.timedelta(hours=14)
    people = [consenting(so, f"p{i}", start + dt.timedelta(seconds=i)) for i in range(6)]
    asked = recorded_queries(so)
    try:
        records = read(connector_for(so, page_size=4, budget=60))
    except BudgetExhausted:
        pytest.fail(f"the read never ended: {len(asked)} archive calls for 6 rows")
    assert [int(r.record_id) for r in records] == people
    # The first change, two pages of the day, the first change after it (and, when `after` takes
    # its own day, today's page).
    assert len(asked) <= 5
    assert all(not query.skip for query in asked), "no page counts rows"


def test_restrictions_on_the_updated_date_name_days_only(so: SuperOfficeSandbox) -> None:
    consenting(so, "a", TODAY - dt.timedelta(days=1, hours=-3))
    consenting(so, "b", dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))
    asked = recorded_queries(so)
    connector = connector_for(so, 10)
    first = read(connector)
    read(connector, connector.resume_from(Cursor(first[-1].modstamp, first[-1].record_id)))
    on_updated = [
        clause
        for query in asked
        for clause in re.findall(r"consentPerson/updatedDate [^']*'[^']*'", query.where)
    ]
    assert on_updated
    for clause in on_updated:
        assert re.fullmatch(r"consentPerson/updatedDate (date|after) '\d{4}\.\d{2}\.\d{2}'", clause), clause


def test_days_apart_with_empty_days_between_are_read_in_order_and_resumed(so: SuperOfficeSandbox) -> None:
    moments = [
        TODAY - dt.timedelta(days=40, hours=-9),
        TODAY - dt.timedelta(days=3, hours=-1),
        TODAY - dt.timedelta(days=3, hours=-2),
        TODAY - dt.timedelta(seconds=1),  # yesterday's last second
        TODAY + dt.timedelta(seconds=1),
    ]
    people = [consenting(so, f"d{i}", at) for i, at in enumerate(moments)]
    asked = recorded_queries(so)
    connector = connector_for(so, page_size=10)
    records = read(connector)
    assert [int(r.record_id) for r in records] == people
    assert [r.modstamp for r in records] == moments
    assert len(asked) < 14, "the empty days in between were each asked for"
    # A run resuming from yesterday's last second (its look-back reaching into yesterday) reads
    # yesterday's rest and today's, nothing before.
    resumed = read(connector, connector.resume_from(Cursor(records[3].modstamp, records[3].record_id)))
    assert [int(r.record_id) for r in resumed] == people[3:]
    # A run whose window stops at midnight reads none of today's.
    until_midnight = list(connector.read_changes("Person", FIELDS, Cursor(records[2].modstamp), TODAY))
    assert [int(r.record_id) for r in until_midnight] == people[2:4]


def test_rows_changed_between_two_pages_of_a_day_are_neither_lost_nor_read_twice(
    so: SuperOfficeSandbox,
) -> None:
    # Yesterday noon, eight persons a second apart; pages of three (by consent id). Between the
    # first and the second page, one person on a later page withdraws now (its row leaves
    # yesterday for today) and one already read withdraws too; a save stamped yesterday commits
    # late (a higher consent id).
    noon = TODAY - dt.timedelta(hours=12)
    people = [consenting(so, f"n{i}", noon + dt.timedelta(seconds=i)) for i in range(8)]
    moved, read_before = people[5], people[0]
    late: list[int] = []
    calls: list[ArchiveQuery] = []

    def users(query: ArchiveQuery) -> None:
        calls.append(query)
        if query.where.startswith("consentPerson/updatedDate date") and " gt " not in query.where:
            tenant = so.tenant
            tenant.set_consent(moved, "EMARKETING", "EMAIL", "WITHDRAWN")
            tenant.set_consent(read_before, "EMARKETING", "EMAIL", "WITHDRAWN")
            tenant.clock = lambda: noon + dt.timedelta(seconds=3)
            person = tenant.begin_late_person(
                "L", "late", "late@example.test", [("EMARKETING", "FORM", "CONSENT", "")]
            )
            tenant.clock = lambda: dt.datetime.now(dt.UTC)
            tenant.commit_late(person.id)
            late.append(person.id)
            so.after_archive_page = calls.append

    so.after_archive_page = users
    records = read(connector_for(so, page_size=3))
    assert late, "the users acted between two page calls"
    ids = [int(r.record_id) for r in records]
    yesterday = [int(r.record_id) for r in records if r.modstamp < TODAY]
    today = [int(r.record_id) for r in records if r.modstamp >= TODAY]
    assert sorted(yesterday) == sorted([p for p in people if p != moved] + late)
    assert len(yesterday) == len(set(yesterday)), "a row was read twice"
    assert sorted(today) == sorted([moved, read_before])
    assert {r.fields["LegalBase_EMARKETING"] for r in records if int(r.record_id) in today} == {"WITHDRAWN"}
    keys = [(r.modstamp, int(r.record_id)) for r in records]
    assert keys == sorted(keys), "the cursor only moves forward"
    assert set(ids) == {*people, *late}


def test_a_page_call_that_makes_no_progress_fails_the_run(
    so: SuperOfficeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    noon = TODAY - dt.timedelta(hours=12)
    for i in range(5):
        consenting(so, f"s{i}", noon + dt.timedelta(seconds=i))
    connector = connector_for(so, page_size=2, budget=1000)
    original = connector._archive_page

    def ignoring_the_key(where: str | None, order: str, top: int | None = None):  # type: ignore[no-untyped-def]
        where = re.sub(r" and consentPerson/consentPersonId gt \d+", "", where or "") or None
        return original(where, order, top)

    monkeypatch.setattr(connector, "_archive_page", ignoring_the_key)
    with pytest.raises(ConnectorError) as raised:
        read(connector)
    assert raised.value.action is Action.FAIL and raised.value.rule.fault is Fault.CONFIG
    assert "consentPersonId" in str(raised.value)
    assert so.calls["archive"] <= 3


@pytest.mark.parametrize("by_day", [False, True], ids=["ordered-by-time", "ordered-by-day"])
def test_a_first_read_takes_every_change_of_the_earliest_day(by_day: bool) -> None:
    # The first read starts from the archive's first row. Ordered by the date part only (ties by
    # consent id), that row may be the day's later change: the day's earlier ones, a withdrawal
    # among them, must still be read.
    tenant = SuperOfficeTenant(default_legal_base=None, sorts_dates_by_day=by_day)
    day = TODAY - dt.timedelta(days=3)
    with SuperOfficeSandbox(tenant) as server:
        later = consenting(server, "later", day + dt.timedelta(hours=15))
        earlier = consenting(server, "earlier", day + dt.timedelta(hours=9), "WITHDRAWN")
        records = read(connector_for(server, 10))
    assert {r.record_id: r.fields["LegalBase_EMARKETING"] for r in records} == {
        str(later): "CONSENT",
        str(earlier): "WITHDRAWN",
    }
