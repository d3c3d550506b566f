"""What a sync must never undo or leave behind of a person's no, checked as a regulator would,
on SQLite and PostgreSQL, against a scripted CRM (an org held in a dict):

* a CRM record merged away into a record that belongs to another person of the ledger: the
  survivor's person carries the merged person's withdrawals and refusals, and the survivor is
  told (a merge must never lose a "no");
* a withdrawal the ledger learned elsewhere is queued for a connector whose reads keep failing,
  so that it is owed (pending, and alerted as a late suppression) rather than never queued.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from consentsync.domain import ConsentStatus, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import outbox
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.observability import late_suppressions
from consentsync.sdk import Action, Connector, ConnectorError, CrmRecord, Cursor, ErrorRule, Fault
from consentsync.sdk.connector import FieldInfo, RecordUpdate, WriteResult
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.helpers import consent_value, mapping_text

CONSENTS = """\
  - purpose: email_marketing
    channel: email
    status:
      field: optout
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true, allowed: false}
"""
MAPPING = mapping_text("scripted", "thing", ("id", "modifiedon", "email"), CONSENTS)


class Org(Connector):
    """A CRM whose records live in a dict; every read hands over every record (the engine skips
    what its snapshots already hold) and the merge notices queued since the last read."""

    vendor = "scripted"

    def __init__(self, clock: Clock) -> None:
        super().__init__("scripted", {})
        self.clock = clock
        self.records: dict[str, dict[str, Any]] = {}
        self.merges: list[CrmRecord] = []
        self.failing = False
        self.refuse_writes = False  # every write answered "failed" (not retryable), none applied
        self.written: list[RecordUpdate] = []

    def put(self, record_id: str, email: str, *, optout: bool = False) -> None:
        self.records[record_id] = {
            "id": record_id,
            "modifiedon": self.clock() - timedelta(minutes=1),
            "email": email,
            "optout": optout,
        }

    def merge(self, loser: str, survivor: str, *, with_fields: bool = False) -> None:
        fields = self.records.pop(loser)
        stamp = self.clock() - timedelta(seconds=30)
        held = fields if with_fields else {}
        self.merges.append(CrmRecord("thing", loser, stamp, held, deleted=True, merged_into=survivor))

    def check(self) -> None:
        pass

    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        return {}

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        if self.failing:
            raise ConnectorError("connection reset", ErrorRule(Action.FAIL, Fault.TRANSIENT, "reset"))
        notices, self.merges = self.merges, []
        changes = [CrmRecord(object_type, r["id"], r["modifiedon"], dict(r)) for r in self.records.values()]
        yield from sorted([*changes, *notices], key=lambda record: (record.modstamp, record.record_id))

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        if self.refuse_writes:
            return [WriteResult(u.record_id, False, "REFUSED", "validation rule", False) for u in updates]
        for update in updates:
            self.written.append(update)
            record = self.records.get(update.record_id)
            if record is not None:
                record.update(update.fields)
                record["modifiedon"] = self.clock()
        return [WriteResult(update.record_id, True) for update in updates]


def _engine(ledger: Ledger, config_path: Path, org: Org) -> SyncEngine:
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    return SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0))


def _state(ledger: Ledger, email: str) -> tuple[str, bool]:
    _uid, state = ledger.decision_for(email, "email_marketing", "email")
    return state.status.value, state.suppressed


def _grant(ledger: Ledger, email: str, at: datetime) -> None:
    ledger.record(
        Identity(email=email),
        consent_value(ConsentStatus.GRANTED, at, ledger.clock(), notice_version="privacy-v3"),
    )


def _pushed(org: Org, record_id: str) -> list[dict[str, Any]]:
    return [dict(update.fields) for update in org.written if update.record_id == record_id]


# -- merges across two people of the ledger ------------------------------------------------------


def test_a_merge_into_another_persons_record_carries_the_withdrawal_to_the_survivor(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "old-address@example.com", optout=True)  # the person said no on this record
    org.put("r2", "new-address@example.com")
    _grant(ledger, "new-address@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "old-address@example.com") == ("withdrawn", True)
    assert _state(ledger, "new-address@example.com") == ("granted", False)
    assert _pushed(org, "r2") == []

    # The CRM user merges the two: the survivor keeps the master's values (opted in).
    clock.advance(minutes=5)
    org.merge("r1", "r2")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    # The survivor's person carries the merged person's no, and the survivor is told.
    assert _state(ledger, "new-address@example.com") == ("withdrawn", True)
    assert _state(ledger, "old-address@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    # Once: a later run neither records the no again nor pushes again.
    clock.advance(minutes=5)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded"
    assert (report.counts.evidence_recorded, report.counts.pushes_enqueued) == (0, 0)


def test_a_no_ticked_on_the_merged_away_record_reaches_the_survivors_person(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The CRM hands over the merged-away record's values (Dynamics keeps the subordinate row):
    an opt-out ticked there just before the merge is the person's, whoever's record survives."""
    org = Org(clock)
    org.put("r1", "old-address@example.com")
    org.put("r2", "new-address@example.com")
    _grant(ledger, "old-address@example.com", clock.now - timedelta(days=30))
    _grant(ledger, "new-address@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=5)
    org.records["r1"]["optout"] = True  # ticked, then merged before any sync read it
    org.merge("r1", "r2", with_fields=True)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "old-address@example.com") == ("withdrawn", True)
    assert _state(ledger, "new-address@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]


def test_a_merge_carries_only_a_no_that_still_binds(ledger: Ledger, config_path: Path, clock: Clock) -> None:
    """A withdrawal the merged person reversed by a new consent binds nobody: the survivor's
    person is not suppressed by it (and takes none of the merged person's yeses either)."""
    org = Org(clock)
    org.put("r1", "old-address@example.com", optout=True)
    org.put("r2", "new-address@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=5)
    _grant(ledger, "old-address@example.com", clock.now)  # a new consent, after the withdrawal
    org.records["r1"]["optout"] = False
    assert _state(ledger, "old-address@example.com") == ("granted", False)
    org.merge("r1", "r2")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    # No consent on record for the survivor's person: nothing of the merged person's carried.
    assert _state(ledger, "new-address@example.com") == ("applicable", True)
    assert _pushed(org, "r2") == []


# -- a connector whose reads keep failing --------------------------------------------------------


def test_a_withdrawal_is_owed_to_a_connector_whose_reads_keep_failing(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "person@example.com")
    _grant(ledger, "person@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    # The person withdraws on the web form; the CRM's reads fail from now on.
    clock.advance(minutes=1)
    ledger.record(
        Identity(email="person@example.com"),
        consent_value(
            ConsentStatus.WITHDRAWN, clock.now, clock.now, basis=LawfulBasis.CONSENT, origin=Origin.CAPTURE
        ),
    )
    org.failing = True
    clock.advance(minutes=1)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "failed" and "connection reset" in (report.error or "")
    assert org.written == []  # nothing is sent to a CRM that cannot be read
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(outbox).where(outbox.c.connector == "scripted")).all()
    assert [(r.record_id, orjson.loads(r.fields), r.status, r.suppression) for r in rows] == [
        ("r1", {"optout": True}, "pending", True)
    ]
    # Owed: after the alert's delay, status and the alerts name it as a late suppression.
    late = late_suppressions(ledger.engine, timedelta(minutes=5), now=clock.now + timedelta(minutes=6))
    assert [(row["connector"], row["record_id"]) for row in late] == [("scripted", "r1")]
    # Once the CRM answers again, the row queued is the one pushed: once.
    org.failing = False
    clock.advance(minutes=10)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]


def test_a_merge_carries_an_upheld_objection_to_the_survivors_person(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "old-address@example.com")
    org.put("r2", "new-address@example.com")
    _grant(ledger, "old-address@example.com", clock.now - timedelta(days=30))
    _grant(ledger, "new-address@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    ledger.raise_objection("old-address@example.com", "email_marketing", direct_marketing=True)
    clock.advance(minutes=5)
    org.merge("r1", "r2")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "new-address@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    # The survivor's own new consent, newer than the objection, lifts it for that purpose.
    clock.advance(minutes=1)
    _grant(ledger, "new-address@example.com", clock.now)
    assert _state(ledger, "new-address@example.com") == ("granted", False)


# -- expiry: a stale undated "opted in" seen again renews nothing -------------------------------


def test_a_stale_opt_in_read_after_the_lapse_does_not_renew_the_consent(ledger: Ledger, clock: Clock) -> None:
    email = "lapsed@example.com"

    def undated_grant(source: str) -> None:
        ledger.record(
            Identity(email=email),
            consent_value(ConsentStatus.GRANTED, None, clock.now, source=source, origin=Origin.CRM),
        )

    undated_grant("crm-one:contacts")  # opted in, no date: valid from when first seen
    clock.advance(days=731)
    assert _state(ledger, email) == ("expired", True)
    ledger.expire_due()
    # A duplicate record, or a CRM connected later, shows the same old "opted in".
    undated_grant("crm-two:leads")
    undated_grant("crm-one:leads")
    assert _state(ledger, email) == ("expired", True)
    # The person's renewal, dated, renews it.
    clock.advance(minutes=1)
    _grant(ledger, email, clock.now)
    assert _state(ledger, email) == ("granted", False)


# -- our own write that never took effect is no echo ---------------------------------------------


def test_a_persons_opt_out_matching_a_write_that_never_took_effect_is_evidence(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A suppression push the CRM refused (it never applied it, and a read since showed the
    record without it) is not what the CRM shows later: when the person then ticks the same
    opt-out themselves, it is their withdrawal, never taken for our echo and overwritten."""
    email = "person@example.com"
    org = Org(clock)
    org.put("r1", email)
    _grant(ledger, email, clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    # Withdrawn on the web form; the CRM refuses the push (dead-lettered, never applied).
    clock.advance(minutes=1)
    ledger.record(Identity(email=email), consent_value(ConsentStatus.WITHDRAWN, clock.now, clock.now))
    org.refuse_writes = True
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert org.records["r1"]["optout"] is False
    # A read since shows the record without it; the person then consents again on the web form.
    org.refuse_writes = False
    org.records["r1"]["modifiedon"] = clock.advance(minutes=1)
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    _grant(ledger, email, clock.now)
    assert _state(ledger, email) == ("granted", False)
    # Now the person ticks the CRM's opt-out themselves.
    clock.advance(minutes=1)
    org.records["r1"].update(optout=True, modifiedon=clock.now)
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, email) == ("withdrawn", True)
    assert org.records["r1"]["optout"] is True  # never overwritten with "allowed"


# -- a duplicate merged away before any sync read it ---------------------------------------------


def test_an_opt_out_on_a_duplicate_merged_away_before_it_was_ever_read_is_kept(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A duplicate the person opted out on (a web-to-lead form, a second contact) that a CRM
    user merges into the person's record before any sync read it: its no is the survivor's
    person's, though the ledger never linked the duplicate."""
    org = Org(clock)
    org.put("r2", "person@example.com")
    _grant(ledger, "person@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=5)
    org.put("r3", "other-address@example.com", optout=True)
    org.merge("r3", "r2", with_fields=True)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "person@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    # The duplicate is shown merged under the survivor's person; no one else was made of it.
    view = ledger.subject_view("person@example.com")
    assert {link["record_id"]: link["status"] for link in view["crm_records"]} == {
        "r2": "live",
        "r3": "merged",
    }
    assert ledger.subject_uids_for_email("other-address@example.com") == []


def test_a_duplicate_merged_away_unread_with_no_no_on_it_changes_nothing(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r2", "person@example.com")
    _grant(ledger, "person@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=5)
    org.put("r3", "other-address@example.com")
    org.merge("r3", "r2", with_fields=True)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.evidence_recorded == 0
    assert _state(ledger, "person@example.com") == ("granted", False)
    assert ledger.subject_uids_for_email("other-address@example.com") == []


def test_a_merge_read_with_its_unknown_survivor_gives_the_no_to_the_survivors_person(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The first read of an org meets the survivor and the news of the merge on one page: the
    survivor's person (known by the survivor's address) takes the duplicate's no, whatever the
    order of the two on the page."""
    _grant(ledger, "person@example.com", clock.now - timedelta(days=30))
    org = Org(clock)
    org.put("r2", "person@example.com")
    org.records["r2"]["modifiedon"] = clock.now - timedelta(seconds=10)  # after the merge notice
    org.put("r3", "other-address@example.com", optout=True)
    org.merge("r3", "r2", with_fields=True)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "person@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    assert ledger.subject_uids_for_email("other-address@example.com") == []


def test_a_no_the_merged_person_gives_after_the_merge_reaches_the_survivor(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The order of arrival does not matter: a withdrawal the merged person gives after the
    merge (through an old link to the preference centre, say) reaches the survivor's person and
    the survivor, as one given before the merge does."""
    org = Org(clock)
    org.put("r1", "old-address@example.com")
    org.put("r2", "new-address@example.com")
    _grant(ledger, "old-address@example.com", clock.now - timedelta(days=30))
    _grant(ledger, "new-address@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=5)
    org.merge("r1", "r2")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "new-address@example.com") == ("granted", False)
    clock.advance(minutes=5)
    ledger.record(
        Identity(email="old-address@example.com"),
        consent_value(ConsentStatus.WITHDRAWN, clock.now, clock.now, source="preference_center"),
    )
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "new-address@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    # Settled: the next runs record and push nothing more.
    clock.advance(minutes=5)
    report = _engine(ledger, config_path, org).run()
    assert (report.counts.evidence_recorded, report.counts.pushes_enqueued) == (0, 0)


def test_two_people_merged_into_each_others_records_share_their_nos_and_settle(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("a1", "first@example.com", optout=True)
    org.put("a2", "first@example.com")
    org.put("b1", "second@example.com")
    org.put("b2", "second@example.com")
    _grant(ledger, "first@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    ledger.raise_objection("second@example.com", "email_marketing", direct_marketing=True)
    clock.advance(minutes=5)
    org.merge("a2", "b1")  # the first person's record into the second's
    org.merge("b2", "a1")  # and the other way round
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded"
    assert _state(ledger, "first@example.com") == ("withdrawn", True)
    assert _state(ledger, "second@example.com")[1] is True
    assert _pushed(org, "b1") == [{"optout": True}]
    clock.advance(minutes=5)
    again = _engine(ledger, config_path, org).run()
    assert (again.counts.evidence_recorded, again.counts.pushes_enqueued) == (0, 0)
