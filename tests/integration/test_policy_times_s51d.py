"""A CRM's no whose time leaves its zone open (a time without an offset) has no time until the
latest moment it can mean has passed (UTC-12); read again after that it is the same no, not a
second one that would undo the consent the person gave after it (docs/policy.md, "A CRM time
without its zone"). Checked on SQLite and PostgreSQL against a scripted CRM."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.helpers import mapping_text
from tests.integration.test_policy_s49_sync import Org, _grant, _state

WALL_CLOCK = mapping_text(
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
  - purpose: service
    channel: email
    status:
      field: service_optout
      direction: pull
      pull: {true: withdrawn, false: null}
""",
)


def _engine(ledger: Ledger, config_path: Path, org: Org) -> SyncEngine:
    mapping = parse_mapping(WALL_CLOCK, config_path.parent / "thing.yaml")
    return SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0))


def _person_on_r1(ledger: Ledger, config_path: Path, clock: Clock) -> Org:
    org = Org(clock)
    org.put("r1", "a@example.com")
    org.records["r1"]["changed_at"] = (clock.now - timedelta(days=30)).isoformat()
    _grant(ledger, "a@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "a@example.com") == ("granted", False)
    clock.advance(minutes=1)
    return org


def test_a_no_without_its_zone_read_again_after_its_latest_moment_is_not_a_second_no(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _person_on_r1(ledger, config_path, clock)
    org.refuse_writes = True  # the CRM keeps showing the no (our push of the new consent refused)
    wall_clock = clock.now.replace(tzinfo=None).isoformat()  # no offset: the CRM's own zone
    org.records["r1"].update(optout=True, changed_at=wall_clock, modifiedon=clock.now)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.evidence_recorded == 1
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    clock.advance(hours=2)
    _grant(ledger, "a@example.com", clock.now)  # the person opts in again on the web form
    assert _state(ledger, "a@example.com") == ("granted", False)
    clock.advance(days=1)  # the no's latest moment (its time at UTC-12) has passed
    # Another consent field of the record changes: the record is read again, whole.
    org.records["r1"].update(service_optout=False, modifiedon=clock.now)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.evidence_recorded == 0
    assert _state(ledger, "a@example.com") == ("granted", False)
    # The person says no again in the CRM: a new no, counted at its latest moment.
    clock.advance(days=1)
    again = (clock.now - timedelta(hours=13)).replace(tzinfo=None).isoformat()
    org.records["r1"].update(optout=True, changed_at=again, modifiedon=clock.now)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.evidence_recorded == 1
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
