"""A CRM record restored from the recycle bin (Salesforce's undelete, HubSpot's restore, Vtiger's
recycle bin) comes back as it was deleted. Whatever the person said or was granted while it was
gone (a withdrawal, an erasure, a restriction) reached no live record of theirs: the restored one
must be told, on its first read, though it shows exactly what its last snapshot held.

Against a scripted CRM with a recycle bin (SQLite and PostgreSQL), and end to end against the
Salesforce sandbox with the shipped mappings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sdk import CrmRecord
from consentsync.sdk.connector import RecordUpdate, WriteAction, WriteResult
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_erasure_actions import _config, _pushes, _sync
from tests.integration.test_policy_s49_sync import MAPPING, Org, _grant, _state

ADDRESS = "ann@example.com"


class BinOrg(Org):
    """The scripted org with a recycle bin: a delete (ours or a CRM user's) moves the record
    there and the next read hands it over as deleted with its last values; ``restore`` brings
    it back as it was, stamped now."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.bin: dict[str, dict[str, Any]] = {}

    def delete(self, record_id: str) -> None:
        fields = self.records.pop(record_id)
        fields["modifiedon"] = self.clock()
        self.bin[record_id] = fields
        self.merges.append(CrmRecord("thing", record_id, fields["modifiedon"], dict(fields), deleted=True))

    def restore(self, record_id: str) -> None:
        fields = self.bin.pop(record_id)
        fields["modifiedon"] = self.clock()
        self.records[record_id] = fields

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        if self.refuse_writes:
            return super().write(updates)
        results = []
        for update in updates:
            if update.action is WriteAction.DELETE:
                self.written.append(update)
                if update.record_id in self.records:
                    self.delete(update.record_id)
                results.append(WriteResult(update.record_id, True))
            else:
                results += super().write([update])
        return results


def _run(ledger: Ledger, config_path: Path, org: Org, clock: Clock, **erasure: str) -> None:
    clock.advance(minutes=1)
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    engine = SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0, erasure_actions=erasure))
    report = engine.run()
    assert report.status == "succeeded", report.error


def _writes(org: Org, record_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(u.action.value, dict(u.fields)) for u in org.written if u.record_id == record_id]


def _deleted_then(ledger: Ledger, config_path: Path, org: BinOrg, clock: Clock, said: Any) -> None:
    """A record read and linked, deleted by a CRM user, the deletion read; then ``said`` (the
    person's no, erasure or restriction, recorded while the record is gone), a run, the record
    restored from the bin, and two runs."""
    org.put("r1", ADDRESS)
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    _run(ledger, config_path, org, clock)
    org.delete("r1")
    _run(ledger, config_path, org, clock)
    said()
    _run(ledger, config_path, org, clock)
    assert _writes(org, "r1") == [], "a push reached a record in the recycle bin"
    org.restore("r1")
    _run(ledger, config_path, org, clock)
    _run(ledger, config_path, org, clock)


def test_a_withdrawal_given_while_the_record_was_deleted_reaches_it_restored(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = BinOrg(clock)

    def withdraw() -> None:
        evidence = consent_value(ConsentStatus.WITHDRAWN, clock.now, clock.now, basis=LawfulBasis.CONSENT)
        ledger.record(Identity(email=ADDRESS), evidence)
        assert _state(ledger, ADDRESS) == ("withdrawn", True)

    _deleted_then(ledger, config_path, org, clock, withdraw)
    assert _writes(org, "r1") == [("update", {"optout": True})], (
        "the withdrawal never reached the restored record"
    )
    assert org.records["r1"]["optout"] is True


def test_an_erasure_while_the_record_was_deleted_reaches_it_restored(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = BinOrg(clock)
    _deleted_then(ledger, config_path, org, clock, lambda: ledger.erase(ADDRESS, reason="Art. 17 request"))
    assert _writes(org, "r1") == [("update", {"optout": True})], (
        "the erased person's restored record was never told"
    )


def test_a_restriction_while_the_record_was_deleted_reaches_it_restored(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = BinOrg(clock)
    _deleted_then(
        ledger,
        config_path,
        org,
        clock,
        lambda: ledger.restrict(ADDRESS, restricted=True, reason="accuracy contested"),
    )
    assert _writes(org, "r1") == [("update", {"optout": True})], (
        "the restricted person's restored record was never told"
    )


def test_a_record_the_erasure_deleted_is_deleted_again_when_restored(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = BinOrg(clock)
    org.put("r1", ADDRESS)
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    _run(ledger, config_path, org, clock, thing="delete")
    ledger.erase(ADDRESS, reason="Art. 17 request")
    _run(ledger, config_path, org, clock, thing="delete")  # the erasure's delete
    _run(ledger, config_path, org, clock, thing="delete")  # reads the deletion
    assert [action for action, _ in _writes(org, "r1")] == ["delete"]
    org.restore("r1")  # a CRM admin undeletes it: the erased person's address, opted in
    _run(ledger, config_path, org, clock, thing="delete")
    _run(ledger, config_path, org, clock, thing="delete")
    assert [action for action, _ in _writes(org, "r1")] == ["delete", "delete"], _writes(org, "r1")
    assert "r1" not in org.records


@pytest.fixture
def salesforce() -> Any:
    with SalesforceSandbox() as sandbox:
        yield sandbox


def test_an_undeleted_salesforce_contact_of_an_erased_person_is_deleted_again(
    tmp_path: Path, ledger_url: str, salesforce: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = salesforce.org
    erased = org.create("Contact", FirstName="Erin", LastName="Rased", Email="erase.me@example.test")
    path = _config(tmp_path, ledger_url, salesforce, monkeypatch, Contact="delete")
    open_ledger(load_config(path), migrate=True).engine.dispose()
    _sync(path)
    ledger = open_ledger(load_config(path))
    ledger.erase("erase.me@example.test", reason="Art. 17 request")
    ledger.engine.dispose()
    _sync(path)  # the erasure deletes the Contact (to the recycle bin)
    time.sleep(1.1)  # Salesforce stamps whole seconds
    _sync(path)  # reads the deletion: the link is gone
    assert org.get(erased)["IsDeleted"] is True
    time.sleep(1.1)
    org.undelete(erased)  # an admin restores it from the recycle bin
    time.sleep(1.1)
    _sync(path)
    assert org.get(erased)["IsDeleted"] is True, "the undeleted Contact of an erased person stays live"
    assert [p["rule"] for p in _pushes(path, erased)] == ["erasure_delete", "erasure_delete"]


def test_an_erasure_the_crm_refused_is_sent_again_to_the_record_restored(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The erasure's delete refused for good (dead-lettered for ops); a CRM user then deletes the
    record and an admin restores it: the record is back, and the erasure is tried on it again."""
    org = BinOrg(clock)
    org.put("r1", ADDRESS)
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    _run(ledger, config_path, org, clock, thing="delete")
    ledger.erase(ADDRESS, reason="Art. 17 request")
    org.refuse_writes = True
    _run(ledger, config_path, org, clock, thing="delete")  # refused: dead
    org.refuse_writes = False
    org.delete("r1")
    _run(ledger, config_path, org, clock, thing="delete")  # reads the deletion
    org.restore("r1")
    _run(ledger, config_path, org, clock, thing="delete")
    _run(ledger, config_path, org, clock, thing="delete")
    assert "r1" not in org.records, "the refused erasure was never tried on the restored record"
