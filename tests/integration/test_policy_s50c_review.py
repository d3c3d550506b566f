"""Three cases a review of session 50's own changes found (each failed before its fix): a person
who comes back after their erasure is not held back by their own address's entry; a record the
CRM deleted before any sync read it brings no address into the ledger; an erasure reaches a
record whose snapshot an older version wrote."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from consentsync.domain import canonical_json
from consentsync.ledger.identity import email_hmac
from consentsync.ledger.schema import crm_links, crm_snapshots
from consentsync.ledger.service import Ledger
from consentsync.sdk.connector import CrmRecord, Cursor
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state


def test_a_person_back_after_their_erasure_is_not_held_back_by_their_own_address(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r2", "b@example.com")
    _grant(ledger, "b@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    ledger.erase("b@example.com", reason="Art. 17 request")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert {"optout": True} in _pushed(org, "r2")
    del org.records["r2"]
    clock.advance(days=30)
    _grant(ledger, "b@example.com", clock.now)  # back: their own new consent, from a trusted source
    org.put("r3", "b@example.com")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "b@example.com") == ("granted", False)
    assert _pushed(org, "r3") == []  # r3 shows no opt-out: as the ledger says, nothing to push


def test_a_record_deleted_before_any_read_brings_no_address_into_the_ledger(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "a@example.com")
    org.put("r5", "known@example.com")
    _grant(ledger, "known@example.com", clock.now - timedelta(days=30))
    stamp = clock.now - timedelta(seconds=30)

    def deleted(record_id: str, email: str) -> CrmRecord:
        fields = {"id": record_id, "modifiedon": stamp, "email": email, "optout": True}
        return CrmRecord("thing", record_id, stamp, fields, deleted=True)

    # Deleted in the CRM (perhaps on an erasure request made there) with the opt-out ticked.
    org.merges += [deleted("r9", "gone@example.com"), deleted("r8", "known@example.com")]
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert ledger.subject_uids_for_email("gone@example.com") == []
    # A person the ledger knows by that address takes the no.
    assert _state(ledger, "known@example.com") == ("withdrawn", True)


class _Incremental(Org):
    """Hands each record over once per change, as an incremental read does."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.given: dict[str, Any] = {}

    def read_changes(self, object_type: str, fields: Any, since: Cursor, until: Any) -> Any:
        for record in super().read_changes(object_type, fields, since, until):
            if self.given.get(record.record_id) != record.modstamp:
                self.given[record.record_id] = record.modstamp
                yield record


def test_an_erasure_reaches_a_record_whose_snapshot_an_older_version_wrote(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _Incremental(clock)
    org.put("r1", "a@example.com")
    org.put("r2", "b@example.com")
    for email in ("a@example.com", "b@example.com"):
        _grant(ledger, email, clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    org.records["r1"].update(email="b@example.com", modifiedon=clock.now)  # A's record, B's address
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    # As an older version kept it: the keyed hash of the address as JSON text.
    older = email_hmac(ledger.erasure_key(), canonical_json("b@example.com"))
    with ledger.engine.begin() as conn:
        link = conn.execute(select(crm_links.c.id).where(crm_links.c.record_id == "r1")).scalar_one()
        conn.execute(update(crm_snapshots).where(crm_snapshots.c.link_id == link).values(identity=older))
    clock.advance(minutes=1)
    ledger.erase("b@example.com", reason="Art. 17 request")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert {"optout": True} in _pushed(org, "r1")  # r1 was not read again: the erasure found it
