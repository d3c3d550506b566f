"""A CRM's no whose time cannot be a time anyone acted at (in the future: a time zone set wrong,
a typo; before 1970) is still the person's no, checked on SQLite and PostgreSQL against a
scripted CRM: it counts from when it was read, and the time goes to ops in quarantine
(docs/policy.md, "Event times and input limits"). A grant with such a time is quarantined, as
before: it is no proof of consent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from consentsync.ledger.schema import quarantine
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.helpers import mapping_text
from tests.integration.test_policy_s49_sync import Org, _grant, _pushed, _state

DATED = mapping_text(
    "scripted",
    "thing",
    ("id", "modifiedon", "email"),
    """\
  - purpose: email_marketing
    channel: email
    status:
      field: optout
      direction: both
      pull: {true: withdrawn, false: granted}
      push: {suppressed: true, allowed: false}
    event_time: {field: changed_at}
""",
)


def _engine(ledger: Ledger, config_path: Path, org: Org) -> SyncEngine:
    mapping = parse_mapping(DATED, config_path.parent / "thing.yaml")
    return SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0))


def _reasons(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        return [row.reason for row in conn.execute(select(quarantine.c.reason))]


def _person_on_r1_and_r2(ledger: Ledger, config_path: Path, clock: Clock) -> Org:
    org = Org(clock)
    for record_id in ("r1", "r2"):
        org.put(record_id, "a@example.com")
        org.records[record_id]["changed_at"] = (clock.now - timedelta(days=30)).isoformat()
    _grant(ledger, "a@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "a@example.com") == ("granted", False)
    clock.advance(minutes=1)
    return org


def test_a_no_stamped_hours_ahead_counts_from_when_it_was_read(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _person_on_r1_and_r2(ledger, config_path, clock)
    ahead = (clock.now + timedelta(hours=2)).isoformat()  # a server whose time zone is set wrong
    org.records["r1"].update(optout=True, changed_at=ahead, modifiedon=clock.now)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded"
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    assert report.counts.quarantined == 1 and "event time" in _reasons(ledger)[0]
    # Read again unchanged, even once its time has passed: nothing new.
    clock.advance(hours=3)
    again = _engine(ledger, config_path, org).run()
    assert (again.counts.evidence_recorded, again.counts.quarantined) == (0, 0)
    # A trusted consent captured after the no was read reverses it, as for any no of unknown time.
    _grant(ledger, "a@example.com", clock.now)
    assert _state(ledger, "a@example.com") == ("granted", False)


def test_a_no_dated_before_1970_still_counts(ledger: Ledger, config_path: Path, clock: Clock) -> None:
    org = _person_on_r1_and_r2(ledger, config_path, clock)
    org.records["r1"].update(optout=True, changed_at="1900-01-01T00:00:00+00:00", modifiedon=clock.now)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "a@example.com") == ("withdrawn", True)


def test_a_grant_stamped_in_the_future_is_still_quarantined(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "a@example.com", optout=True)
    org.records["r1"]["changed_at"] = (clock.now - timedelta(days=1)).isoformat()
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    clock.advance(minutes=1)
    ahead = (clock.now + timedelta(hours=2)).isoformat()
    org.records["r1"].update(optout=False, changed_at=ahead, modifiedon=clock.now)
    report = _engine(ledger, config_path, org).run()
    assert (report.counts.quarantined, report.counts.evidence_recorded) == (1, 0)
    assert _state(ledger, "a@example.com") == ("withdrawn", True)


def test_a_no_dated_today_read_again_on_a_later_day_is_not_a_second_no(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A Date field's no read the day it was given has no time yet (counted from when it was
    read); read again on a later day it is the same no, not one at that day's end, which would
    undo the consent the person gave after it that day. A no dated to a later day still counts."""
    org = _person_on_r1_and_r2(ledger, config_path, clock)
    today = clock.now.date().isoformat()
    org.records["r1"].update(optout=True, changed_at=today, modifiedon=clock.now)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    clock.advance(hours=2)
    _grant(ledger, "a@example.com", clock.now)  # the person opts in again on the web form
    assert _state(ledger, "a@example.com") == ("granted", False)
    clock.advance(days=1)
    org.records["r1"].update(email="A@example.com", modifiedon=clock.now)  # another change
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.evidence_recorded == 0
    assert _state(ledger, "a@example.com") == ("granted", False)
    # The person says no again in the CRM, the next day: a new no.
    clock.advance(days=1)
    yesterday = (clock.now - timedelta(days=1)).date().isoformat()
    org.records["r1"].update(optout=True, changed_at=yesterday, modifiedon=clock.now)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.evidence_recorded == 1
    assert _state(ledger, "a@example.com") == ("withdrawn", True)


def test_a_no_re_dated_to_a_later_day_than_its_first_reading_is_a_new_no(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The CRM kept showing the no (our push of the new consent refused), and the person said no
    again the next day: the Date field moved on, and that later no reverses the consent."""
    org = _person_on_r1_and_r2(ledger, config_path, clock)
    org.refuse_writes = True
    org.records["r1"].update(optout=True, changed_at=clock.now.date().isoformat(), modifiedon=clock.now)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(hours=2)
    _grant(ledger, "a@example.com", clock.now)
    assert _engine(ledger, config_path, org).run().status == "succeeded"  # its push refused
    assert _state(ledger, "a@example.com") == ("granted", False)
    clock.advance(days=1)
    org.records["r1"].update(changed_at=clock.now.date().isoformat(), modifiedon=clock.now)
    clock.advance(days=1)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.evidence_recorded == 1
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
