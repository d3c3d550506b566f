"""A write the CRM answers "no such record" (a contact a CRM user deleted for good, a recycle
bin emptied, a record archived that no listing has named yet): the record is gone, as a deletion
listing would have said, and nothing more is sent to it. It was dead-lettered and quarantined for
ops instead, every time the person's state changed, with nothing ops could do.

Against a scripted CRM whose deletions are listed only when the test says (SQLite and
PostgreSQL): a listing that names the record later, with its last values, still takes the no a
CRM user ticked on it before deleting it, and records a merge's survivor; a record restored is
live again and told what it missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from consentsync.ledger.schema import audit_entries, crm_links, outbox, quarantine
from consentsync.ledger.service import Ledger
from consentsync.sdk import CrmRecord
from consentsync.sdk.connector import RecordUpdate, WriteAction, WriteResult
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _state

ADDRESS = "gone.by.write@example.com"


class VanishingOrg(Org):
    """The scripted org where a CRM user's deletion is listed only once :meth:`list_deletion` is
    called (a recycle bin read later, a listing behind): until then a write to the record is
    answered "no such record"."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.vanished: dict[str, dict[str, Any]] = {}

    def vanish(self, record_id: str) -> None:
        fields = self.records.pop(record_id)
        fields["modifiedon"] = self.clock()
        self.vanished[record_id] = fields

    def list_deletion(self, record_id: str, *, merged_into: str | None = None) -> None:
        fields = self.vanished[record_id]
        self.merges.append(
            CrmRecord(
                "thing", record_id, fields["modifiedon"], dict(fields), deleted=True, merged_into=merged_into
            )
        )

    def restore(self, record_id: str) -> None:
        fields = self.vanished.pop(record_id)
        fields["modifiedon"] = self.clock()
        self.records[record_id] = fields

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        results = []
        for update in updates:
            if update.record_id in self.records or update.action is WriteAction.DELETE:
                results += super().write([update])
            else:
                self.written.append(update)
                results.append(
                    WriteResult(update.record_id, False, "NOT_FOUND", "no such record", False, gone=True)
                )
        return results


def _run(ledger: Ledger, config_path: Path, org: Org, clock: Clock) -> None:
    clock.advance(minutes=1)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded", report.error


def _link(ledger: Ledger, record_id: str) -> Any:
    with ledger.engine.connect() as conn:
        return conn.execute(select(crm_links).where(crm_links.c.record_id == record_id)).one()


def _open_quarantine(ledger: Ledger) -> list[Any]:
    with ledger.engine.connect() as conn:
        return conn.execute(select(quarantine).where(quarantine.c.resolved_at.is_(None))).all()


def _link_entries(ledger: Ledger, record_id: str) -> list[tuple[str, dict[str, Any]]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(audit_entries.c.action, audit_entries.c.payload).order_by(audit_entries.c.seq)
        ).all()
    entries = [(action, orjson.loads(payload)["what"]) for action, payload in rows]
    return [(a, w) for a, w in entries if a.startswith("crm.record_") and w.get("record") == record_id]


def _linked_then_vanished(ledger: Ledger, config_path: Path, org: VanishingOrg, clock: Clock) -> None:
    """Two records of the person read and linked, opted in; a CRM user deletes r1 (not listed
    yet); the person restricts processing, which is pushed to both."""
    org.put("r1", ADDRESS)
    org.put("r2", ADDRESS)
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    _run(ledger, config_path, org, clock)
    org.vanish("r1")
    ledger.restrict(ADDRESS, restricted=True, reason="accuracy contested")
    _run(ledger, config_path, org, clock)


def test_a_write_answered_no_such_record_marks_it_gone_and_sends_it_nothing_more(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = VanishingOrg(clock)
    _linked_then_vanished(ledger, config_path, org, clock)
    assert org.records["r2"]["optout"] is True
    assert sorted(u.record_id for u in org.written) == ["r1", "r2"]
    link = _link(ledger, "r1")
    assert link.gone_at is not None and link.gone_by_write is True, "the record the CRM has not is still live"
    assert _link(ledger, "r2").gone_at is None
    assert _open_quarantine(ledger) == [], "a record the CRM deleted was quarantined for ops"
    with ledger.engine.connect() as conn:
        statuses = {
            (row.record_id, row.status) for row in conn.execute(select(outbox.c.record_id, outbox.c.status))
        }
    assert ("r1", "superseded") in statuses and ("r1", "dead") not in statuses, statuses
    assert [(a, w.get("found_by")) for a, w in _link_entries(ledger, "r1")] == [
        ("crm.record_deleted", "write")
    ]
    # The person's next change goes to the live record only.
    written_before = len(org.written)
    ledger.restrict(ADDRESS, restricted=False, reason="accuracy confirmed")
    _run(ledger, config_path, org, clock)
    assert [u.record_id for u in org.written[written_before:]] == ["r2"], org.written[written_before:]
    assert org.records["r2"]["optout"] is False
    assert _open_quarantine(ledger) == []


def test_a_listing_naming_it_later_still_takes_the_no_ticked_before_the_deletion(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A CRM user ticks the opt-out and deletes the record before any sync read it; the write
    finds it gone; the recycle bin's listing hands it over later with its last values. The no is
    the person's: once the restriction is lifted, they must stay suppressed."""
    org = VanishingOrg(clock)
    org.put("r1", ADDRESS)
    org.put("r2", ADDRESS)
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    _run(ledger, config_path, org, clock)
    clock.advance(minutes=1)
    org.records["r1"]["optout"] = True
    org.vanish("r1")
    ledger.restrict(ADDRESS, restricted=True, reason="accuracy contested")
    _run(ledger, config_path, org, clock)
    assert _link(ledger, "r1").gone_by_write is True
    ledger.restrict(ADDRESS, restricted=False, reason="accuracy confirmed")
    org.list_deletion("r1")
    _run(ledger, config_path, org, clock)
    assert _state(ledger, ADDRESS) == ("withdrawn", True), "the no ticked before the deletion was lost"
    link = _link(ledger, "r1")
    assert link.gone_at is not None and not link.gone_by_write
    # Audited once as deleted (by the write), not again by the listing.
    assert [a for a, _ in _link_entries(ledger, "r1")] == ["crm.record_deleted"]


def test_a_listing_naming_it_later_as_merged_records_the_survivor(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = VanishingOrg(clock)
    _linked_then_vanished(ledger, config_path, org, clock)
    org.list_deletion("r1", merged_into="r2")
    _run(ledger, config_path, org, clock)
    link = _link(ledger, "r1")
    assert (link.merged_into, link.gone_by_write) == ("r2", None)
    entries = _link_entries(ledger, "r1")
    assert [a for a, _ in entries] == ["crm.record_deleted", "crm.record_merged"], entries


def test_a_record_found_gone_then_restored_is_live_and_told_what_it_missed(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = VanishingOrg(clock)
    _linked_then_vanished(ledger, config_path, org, clock)
    org.restore("r1")  # a CRM admin restores it: opted in, as it was deleted
    _run(ledger, config_path, org, clock)
    _run(ledger, config_path, org, clock)
    link = _link(ledger, "r1")
    assert link.gone_at is None and link.gone_by_write is None
    assert org.records["r1"]["optout"] is True, "the restored record was never told of the restriction"


def test_a_deletion_found_by_a_write_counts_once(ledger: Ledger, config_path: Path, clock: Clock) -> None:
    """Counted when the write found the record gone, not again when the listing names it (nor
    when a look-back window lists it once more)."""
    org = VanishingOrg(clock)
    _linked_then_vanished(ledger, config_path, org, clock)
    for _ in range(2):
        org.list_deletion("r1")
        clock.advance(minutes=1)
        report = _engine(ledger, config_path, org).run()
        assert report.status == "succeeded", report.error
        assert report.counts.deleted_records == 0, report.counts
