"""SuperOffice soft-deletes a person into its recycle bin (14 days by default) and a restore (the
user's Recycle bin > Restore, or ``POST Agents/Person/Undelete``) brings it back with its consent
rows untouched (ConsentPerson has no deleted date), so the consents' archive never names it
again. The connector notes each person it deleted or found gone and looks it up at each read
while the recycle bin may still hold it: a restored person is read again (docs/policy.md: its
link is live again, an erasure's delete on it is sent again)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_superoffice import SuperOfficeConnector
from consentsync_superoffice.sandbox.harness import SuperOfficeHarness
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from sqlalchemy import select

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger.schema import crm_links, outbox
from consentsync.sdk import Cursor, RecordUpdate, WriteAction
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.sandbox.serving import serve_seeded

FIELDS = ["Email", "LegalBase_EMARKETING", "LegalBase_STORE"]


@pytest.fixture
def so() -> Iterator[SuperOfficeSandbox]:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    yield from serve_seeded(SuperOfficeSandbox(), lambda server: server.tenant.seed(12, seed=64, start=start))


def connector_for(so: SuperOfficeSandbox, **extra: Any) -> SuperOfficeConnector:
    settings = {
        "base_url": so.tenant_url,
        "auth": "token",
        "access_token": so.issue_token(),
        "ca_bundle": str(so.ca_cert_path),
        **extra,
    }
    return SuperOfficeConnector("so-restore", settings)


def read(so: SuperOfficeSandbox, since: Cursor, **extra: Any) -> tuple[list[int], Cursor]:
    """One run's read (a connector of its own), resumed from ``since``: the persons it handed on
    and the cursor the engine would keep."""
    time.sleep(1.1)  # the next run reads up to a later second
    connector = connector_for(so, **extra)
    records = list(
        connector.read_changes("Person", FIELDS, connector.resume_from(since), dt.datetime.now(dt.UTC))
    )
    return [int(record.record_id) for record in records], connector.completed_cursor or since


def test_a_person_deleted_by_an_erasure_and_restored_is_read_again_once(so: SuperOfficeSandbox) -> None:
    _all, cursor = read(so, Cursor())
    victim = 3
    [result] = connector_for(so).write([RecordUpdate("Person", str(victim), {}, WriteAction.DELETE)])
    assert result.ok and not so.tenant.visible(victim) and victim in so.tenant.recycle_bin
    handed, cursor = read(so, cursor)
    assert victim not in handed, "a person in the recycle bin was read"
    # An admin restores the person: nothing of its consents changes.
    response = so.requests_session().post(
        f"{so.tenant_url}/api/v1/Agents/Person/Undelete",
        json={"Id": victim},
        headers={"Authorization": f"Bearer {so.issue_token()}"},
    )
    assert response.status_code == 204 and so.tenant.visible(victim)
    handed, cursor = read(so, cursor)
    assert victim in handed, "the restored person was not read again"
    # Once that read's position is kept, the person is looked up no more.
    so.reset_counters()
    handed, cursor = read(so, cursor)
    assert victim not in handed and so.calls["person_get"] == 0


def test_a_restored_person_is_handed_on_again_where_the_read_was_not_kept(so: SuperOfficeSandbox) -> None:
    _all, cursor = read(so, Cursor())
    connector_for(so).write([RecordUpdate("Person", "5", {}, WriteAction.DELETE)])
    so.tenant.restore_person(5)
    handed, _lost = read(so, cursor)  # the run stops before the engine keeps its position
    assert 5 in handed
    handed, _kept = read(so, cursor)
    assert 5 in handed, "a restore handed on by a read that was never kept is lost"


def test_a_person_found_gone_by_a_write_and_restored_is_read_again(so: SuperOfficeSandbox) -> None:
    _all, cursor = read(so, Cursor())
    so.tenant.delete_person(7)  # a user's delete
    [result] = connector_for(so).write([RecordUpdate("Person", "7", {"LegalBase_EMARKETING": "WITHDRAWN"})])
    assert result.gone
    so.tenant.restore_person(7)
    handed, _cursor = read(so, cursor)
    assert 7 in handed


def test_a_person_still_in_the_recycle_bin_costs_a_lookup_a_read_until_it_is_purged(
    so: SuperOfficeSandbox,
) -> None:
    _all, cursor = read(so, Cursor())
    connector = connector_for(so)
    connector.write([RecordUpdate("Person", "2", {}, WriteAction.DELETE)])
    so.reset_counters()
    handed, cursor = read(so, cursor)
    assert 2 not in handed and so.calls["person_get"] == 1
    # Noted longer ago than the recycle bin keeps a person: purged, forgotten, never looked up.
    long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=16)).replace(microsecond=0)
    connector._journal.discard(connector._journal.names())
    connector._journal.add(f"2@{long_ago.isoformat()}")
    so.reset_counters()
    handed, cursor = read(so, cursor)
    assert so.calls["person_get"] == 0 and connector._journal.names() == set()
    # recycle_bin_days: 0 turns the lookups off.
    connector.write([RecordUpdate("Person", "4", {}, WriteAction.DELETE)])
    so.reset_counters()
    read(so, cursor, recycle_bin_days=0)
    assert so.calls["person_get"] == 0


def test_a_run_budget_looks_up_some_noted_persons_each_read_in_turn(so: SuperOfficeSandbox) -> None:
    """Many persons noted and a small budget: each read looks up a quarter of what its budget
    leaves at most (the changes are still read), the next read the next ones."""
    _all, cursor = read(so, Cursor())
    connector_for(so).write([RecordUpdate("Person", str(p), {}, WriteAction.DELETE) for p in range(1, 7)])
    so.tenant.restore_person(5)
    asked: list[int] = []
    for _run in range(3):
        so.reset_counters()
        handed, cursor = read(so, cursor, budget={"per_run": 8})
        asked.append(so.calls["person_get"])
        if 5 in handed:
            break
    assert asked == [2, 2, 2] and 5 in handed


def test_the_sandbox_keeps_a_deleted_person_restorable_for_its_retention(so: SuperOfficeSandbox) -> None:
    tenant = so.tenant
    before = [(row.id, row.legal_base.key, row.updated) for row in tenant.consent_rows(6)]
    updated = tenant.persons[6].updated
    tenant.delete_person(6)
    assert tenant.consent_rows(6) == [] and not tenant.visible(6)
    tenant.restore_person(6)
    assert [(row.id, row.legal_base.key, row.updated) for row in tenant.consent_rows(6)] == before
    assert tenant.persons[6].updated == updated
    tenant.delete_person(6)
    tenant.recycle_bin[6] = (*tenant.recycle_bin[6][:2], tenant.clock() - dt.timedelta(days=15))
    with pytest.raises(Exception, match="not in the recycle bin"):
        tenant.restore_person(6)


# -- through the sync engine ---------------------------------------------------------------------

ERASED = "erase.me@example.test"


@pytest.fixture
def harness() -> Iterator[SuperOfficeHarness]:
    harness = SuperOfficeHarness()
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def _run(config: Path, **options: Any) -> None:
    report = open_sync_engine(config).run(**options)
    assert report.status == "succeeded", report.error


def test_an_erased_person_restored_from_the_recycle_bin_is_deleted_again(
    harness: SuperOfficeHarness, tmp_path: Path
) -> None:
    """docs/policy.md: a record restored from the CRM's recycle bin is live again (audited
    ``crm.record_restored``) and an erasure's delete done on it is sent again."""
    tenant = harness.tenant
    # Consents given hours ago: no look-back window reads them again (only a restore can).
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    for email in (ERASED, "keep.me@example.test"):
        person = tenant.create_person("Restore", "Test", email, at=earlier)
        tenant.set_consent(person.id, "EMARKETING", "FORM", "CONSENT", "", at=earlier)
    erased = str(next(p.id for p in tenant.persons.values() if p.email == ERASED))
    config = write_sync_config(harness, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["erasure"] = {"Person": "delete"}
    config.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    time.sleep(1.1)  # a read takes the seconds before the one it runs in
    _run(config, full=True)
    engine = open_sync_engine(config)
    engine.ledger.erase(ERASED, reason="Art. 17 request")
    engine.ledger.engine.dispose()
    time.sleep(1.1)
    _run(config)
    assert int(erased) in tenant.recycle_bin, "the erasure's delete did not reach SuperOffice"
    time.sleep(1.1)
    tenant.restore_person(int(erased))  # an admin restores it: the person's data is back
    _run(config)
    ledger = open_ledger(load_config(config))
    with ledger.engine.connect() as conn:
        restored = [e["what"]["record"] for e in audit.entries(conn, action="crm.record_restored")]
        deletes = conn.execute(
            select(outbox.c.status).where(outbox.c.record_id == erased, outbox.c.action == "delete")
        ).all()
        link = conn.execute(select(crm_links.c.gone_at).where(crm_links.c.record_id == erased)).one()
    ledger.engine.dispose()
    assert erased in restored, "the restore was never read"
    assert not tenant.visible(int(erased)), "the erasure's delete was not sent again"
    assert sorted(status for (status,) in deletes) == ["done", "superseded"]
    assert link.gone_at is not None
