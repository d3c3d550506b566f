"""Art. 17: an erasure's delete or anonymise reaches the CRM records that held the person's data
when the erasure was made, whenever the sync first reads them, and never a record the CRM made
since (a person met again after the erasure: suppressed, named to ops, not deleted).

Before: a record a CRM user created after the erasure was deleted by the next sync (it was linked
to the erased person by the address's keyed hash), and a record the CRM held before an erasure
asked for an address the ledger did not know yet was only suppressed, its personal data kept."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config
from tests.integration.test_erasure_actions import ERASED, KEPT, _config, _pushes, _sync


@pytest.fixture
def org() -> Any:
    from consentsync_salesforce.sandbox import SalesforceSandbox

    with SalesforceSandbox() as sandbox:
        yield sandbox


def _erase(path: Path) -> dict[str, Any]:
    ledger = open_ledger(load_config(path))
    try:
        return ledger.erase(ERASED, reason="Art. 17 request")
    finally:
        ledger.engine.dispose()


def _held(path: Path, record_id: str) -> list[str]:
    ledger = open_ledger(load_config(path))
    with ledger.engine.connect() as conn:
        found = [
            e["rule"] for e in audit.entries(conn, action="crm.push_held") if e["what"]["record"] == record_id
        ]
    ledger.engine.dispose()
    return found


def _after_a_whole_second() -> None:
    # Salesforce stamps CreatedDate in whole seconds: a record made in the erasure's second reads
    # as made before it (the action reaches it).
    time.sleep(1.1)


def _deleted(org: Any, record_id: str) -> bool:
    record = org.org.get(record_id)
    return record is None or bool(record.get("IsDeleted"))


def _erased_by(org: Any, record_id: str, action: str) -> bool:
    if action == "delete":
        return _deleted(org, record_id)
    return bool(org.org.get(record_id)["LastName"] == "Erased")


@pytest.mark.parametrize("action", ["delete", "anonymise"])
def test_a_record_made_after_the_erasure_is_suppressed_not_erased(
    tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    first = org.org.create("Contact", FirstName="Erin", LastName="Rased", Email=ERASED, Phone="+44 20 1")
    path = _config(tmp_path, ledger_url, org, monkeypatch, Contact=action)
    open_ledger(load_config(path), migrate=True).engine.dispose()
    _sync(path)
    assert _erase(path)["subject_known"] is True
    _sync(path)
    _after_a_whole_second()
    again = org.org.create("Contact", FirstName="Erin", LastName="Back", Email=ERASED, Phone="+44 20 2")
    _sync(path)
    _sync(path)
    assert _erased_by(org, first, action), "the record held at the erasure was not erased"
    record = org.org.get(again)
    assert not _deleted(org, again), "a record made after the erasure was deleted"
    assert (record["LastName"], record["Phone"]) == ("Back", "+44 20 2"), "it was anonymised"
    assert record["HasOptedOutOfEmail"] is True, "the erased address is not suppressed on it"
    assert all(rule not in ("erasure_delete", "erasure_anonymise") for rule in _pushes(path, again))
    assert "erasure_suppress_only_created_after" in _held(path, again), "ops are not told why"
    # Ops confirm with the person that the new record is theirs to erase too: asked again, the
    # erasure reaches what the CRM holds now.
    _after_a_whole_second()
    assert _erase(path)["already_suppressed"] is True
    _sync(path)
    _sync(path)
    assert _erased_by(org, again, action), "the erasure asked again did not reach the record"


def test_a_record_held_before_an_erasure_the_ledger_had_not_met_is_erased_when_first_read(
    tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = org.org.create("Contact", FirstName="Kim", LastName="Kept", Email=KEPT)
    path = _config(tmp_path, ledger_url, org, monkeypatch, Contact="delete")
    open_ledger(load_config(path), migrate=True).engine.dispose()
    _sync(path)
    # Made in the CRM before the erasure, never read by a sync before it.
    held = org.org.create("Contact", FirstName="Erin", LastName="Rased", Email=ERASED, Phone="+44 20 1")
    _after_a_whole_second()
    assert _erase(path)["subject_known"] is False
    _after_a_whole_second()
    later = org.org.create("Contact", FirstName="Erin", LastName="Back", Email=ERASED, Phone="+44 20 2")
    _sync(path)
    _sync(path)  # reads its own writes back: nothing more is sent
    assert _deleted(org, held), "the record the CRM held when the erasure was asked was kept"
    assert [p["rule"] for p in _pushes(path, held)] == ["erasure_delete"]
    assert not _deleted(org, later), "a record made after the erasure was deleted"
    assert org.org.get(later)["HasOptedOutOfEmail"] is True
    assert all(p["rule"] != "erasure_delete" for p in _pushes(path, later))
    assert org.org.get(kept)["LastName"] == "Kept"


def test_a_record_made_after_the_erasure_that_takes_in_a_record_held_then_is_erased(
    tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge into a record made since the erasure (a CRM user entering the person again, then
    merging the old record into it; HubSpot's merge makes a new contact) leaves the survivor
    holding the erased person's data from before: the delete reaches it."""
    held = org.org.create("Contact", FirstName="Erin", LastName="Rased", Email=ERASED, Phone="+44 20 1")
    path = _config(tmp_path, ledger_url, org, monkeypatch, Contact="delete")
    open_ledger(load_config(path), migrate=True).engine.dispose()
    _sync(path)
    _erase(path)
    _after_a_whole_second()
    survivor = org.org.create("Contact", FirstName="Erin", LastName="Back", Email=ERASED)
    org.org.merge(survivor, held)
    _sync(path)
    _sync(path)
    assert _deleted(org, survivor), "the survivor holding the erased person's data was kept"
    assert [p["rule"] for p in _pushes(path, survivor)] == ["erasure_delete"]
