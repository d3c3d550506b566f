"""Which CRM records speak for a person under an address they left (docs/policy.md, "An address a
person no longer holds does not speak for them"), against a scripted CRM, on SQLite and
PostgreSQL. Alex's record r1 shows OLD, then NEW: Alex left OLD. Then:

* r1 itself, known by its id as Alex's from before, showing OLD again with a grant: OLD is Alex's
  again and the grant is Alex's;
* a record linked by OLD after Alex left it (the recycled mailbox's new owner's), edited away
  from OLD and back: it never makes OLD Alex's again, and its grant stays set aside;
* a record linked by OLD while Alex still held it, but after Alex's record (a lead the new owner
  made before Alex's record moved): its grant once Alex left is set aside too;
* a no from any of them is Alex's (on the safe side).

The sandbox scenario of the finding: test_s64_left_address_sandboxes.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, select

from consentsync.ledger.schema import quarantine, subject_identifiers
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.helpers import mapping_text
from tests.integration.test_ledger_query_plans import _capture, _whole_table_reads
from tests.integration.test_policy_s49_sync import Org

OLD, NEW, OTHER = "old.box@example.org", "alex.ames@example.org", "someone.else@example.org"
CONSENTS = """\
  - purpose: email_marketing
    channel: email
    status:
      field: status
      direction: pull
      pull: {"in": granted, "out": withdrawn}
"""
MAPPING = mapping_text("scripted", "thing", ("id", "modifiedon", "email"), CONSENTS)


def _edit(org: Org, record_id: str, **fields: Any) -> None:
    """A CRM user's edit (a new record where ``record_id`` is new), stamped now."""
    record = org.records.setdefault(record_id, {"id": record_id, "email": None, "status": None})
    record.update(fields, modifiedon=org.clock())


def _run(ledger: Ledger, config_path: Path, org: Org, clock: Clock) -> Any:
    clock.advance(minutes=1)
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    report = SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0)).run()
    assert report.status == "succeeded", report.error
    return report


def _marketing(ledger: Ledger) -> str:
    _uid, state = ledger.decision_for(NEW, "email_marketing", "email")
    return state.status.value


def _left(ledger: Ledger) -> bool:
    with ledger.engine.connect() as conn:
        left_at = conn.execute(
            select(subject_identifiers.c.left_at).where(subject_identifiers.c.value == OLD)
        ).scalar()
    return left_at is not None


def _set_aside(ledger: Ledger, record_id: str) -> list[str]:
    with ledger.engine.connect() as conn:
        reasons = conn.execute(select(quarantine.c.reason).where(quarantine.c.record_id == record_id))
        return list(reasons.scalars())


def _alex_moved(ledger: Ledger, config_path: Path, clock: Clock, *, before: str | None = None) -> Org:
    """r1 read showing OLD, then NEW. ``before``: a record made with OLD (and nothing to say)
    between the two reads."""
    org = Org(clock)
    _edit(org, "r1", email=OLD)
    _run(ledger, config_path, org, clock)
    if before is not None:
        _edit(org, before, email=OLD)
        _run(ledger, config_path, org, clock)
    _edit(org, "r1", email=NEW)
    _run(ledger, config_path, org, clock)
    assert _left(ledger)
    return org


def test_a_record_of_theirs_from_before_showing_the_address_again_speaks_for_them(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _alex_moved(ledger, config_path, clock)
    _edit(org, "r1", email=OLD, status="in")
    report = _run(ledger, config_path, org, clock)
    assert not _left(ledger), "Alex's own record showing OLD again makes it Alex's again"
    assert _marketing(ledger) == "granted"
    assert report.counts.quarantined == 0 and _set_aside(ledger, "r1") == []


def test_a_record_linked_by_the_left_address_never_makes_it_theirs_again(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _alex_moved(ledger, config_path, clock)
    _edit(org, "r2", email=OLD)  # the new owner's: linked to Alex by OLD alone
    _run(ledger, config_path, org, clock)
    _edit(org, "r2", email=OTHER)
    _run(ledger, config_path, org, clock)
    _edit(org, "r2", email=OLD, status="in")
    report = _run(ledger, config_path, org, clock)
    assert _left(ledger), "a record linked after Alex left OLD made it Alex's again"
    assert _marketing(ledger) != "granted"
    assert report.counts.quarantined == 1 and len(_set_aside(ledger, "r2")) == 1


def test_a_record_linked_after_theirs_says_nothing_for_them_once_they_left(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _alex_moved(ledger, config_path, clock, before="r2")
    _edit(org, "r2", status="in")
    report = _run(ledger, config_path, org, clock)
    assert _marketing(ledger) != "granted"
    assert report.counts.quarantined == 1
    (reason,) = _set_aside(ledger, "r2")
    assert reason.startswith("not recorded as its person's consent (email_marketing/email granted)")
    # Read again unchanged: nothing new, nothing set aside again.
    _edit(org, "r2")
    assert _run(ledger, config_path, org, clock).counts.quarantined == 0


def test_a_no_under_the_left_address_is_theirs(ledger: Ledger, config_path: Path, clock: Clock) -> None:
    org = _alex_moved(ledger, config_path, clock)
    _edit(org, "r2", email=OLD, status="out")
    report = _run(ledger, config_path, org, clock)
    assert _marketing(ledger) == "withdrawn"
    assert report.counts.quarantined == 0 and _set_aside(ledger, "r2") == []


def test_the_left_addresses_are_weighed_through_indexes(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The two reads a page showing a left address pays (when its records were linked and the
    address left; whether a re-read record showing it holds it again) go through indexes
    (test_ledger_query_plans: EXPLAIN on SQLite, scans priced out on PostgreSQL)."""
    org = _alex_moved(ledger, config_path, clock)
    _edit(org, "r2", email=OLD)
    _run(ledger, config_path, org, clock)
    _edit(org, "r2", email=OTHER)
    _run(ledger, config_path, org, clock)
    _edit(org, "r2", email=OLD, status="in")
    statements = _capture(ledger)
    try:
        _run(ledger, config_path, org, clock)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)
    joins = [sql for sql, _ in statements if "JOIN subject_identifiers" in sql or "JOIN crm_links" in sql]
    assert len(joins) == 2, joins
    assert _whole_table_reads(ledger, statements) == []
