"""A record read on an earlier page of the run that leaves the address it shows (session 65 review
of 6dc0598; docs/policy.md, "An address a person no longer holds does not speak for them": "one
read on the very page (or run) whose re-read record leaves the address"). Against the Salesforce
sandbox over HTTP, on SQLite and PostgreSQL.

The mailbox's new owner's Contact (old.box@, a grant) is made just before Alex's Contact moves
off old.box@; both are read in one run. With a page of one record, the new owner's Contact came
on the page before the move, and its grant was recorded as Alex's consent. Now a new record
matched by the address alone to a person whose older record still shows it has its grants held
for the run's reads: set aside once the run has left the address, recorded where it has not. A
run that stops before its reads end leaves the record for the next run to read again by id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from consentsync.app import open_sync
from consentsync.config import load_config
from consentsync.demo_crms import _past_this_second
from consentsync.ledger.schema import quarantine
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine
from consentsync.sync.failpoints import FailpointHit
from tests.conftest import running_harness
from tests.integration.test_s64_left_address_sandboxes import NEW, OLD, _ledger, _sync
from tests.integration.test_s64b_left_address_sandboxes import _old_left
from tests.integration.test_s65_left_leaving_page_pointers import GRANT

# The words of the quarantine row naming a grant set aside (engine._set_aside).
SET_ASIDE = "not recorded as its person's consent"


@pytest.fixture
def sf() -> Iterator[Any]:
    with running_harness("salesforce") as harness:
        yield harness


def _configure(sf: Any, config_path: Path, batch: int) -> None:
    shipped = Path(sf.mapping_files[0]).read_text()
    assert "\npersonal_fields:" in shipped
    mapping = config_path.parent / "sf_contact.yaml"
    mapping.write_text(shipped.replace("\npersonal_fields:", GRANT + "\npersonal_fields:", 1))
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": "sf",
            "vendor": sf.vendor,
            "mappings": [str(mapping)],
            "settings": sf.connector_settings(),
            "signpost_lag_seconds": 0,
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
            "batch_size": batch,
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _profiling(ledger: Ledger) -> str:
    _uid, state = ledger.decision_for(NEW, "profiling", "email")
    return state.status.value


def _reasons(ledger: Ledger, record_id: str) -> list[tuple[str, bool]]:
    with ledger.engine.connect() as conn:
        return [
            (reason, resolved is not None)
            for reason, resolved in conn.execute(
                select(quarantine.c.reason, quarantine.c.resolved_at)
                .where(quarantine.c.record_id == record_id)
                .order_by(quarantine.c.id)
            )
        ]


@pytest.mark.parametrize("batch", [1, 1000])
def test_a_grant_read_on_a_page_before_the_move_is_set_aside(sf: Any, config_path: Path, batch: int) -> None:
    _configure(sf, config_path, batch)
    ledger = _ledger(config_path)
    try:
        org = sf.sandbox.org
        alex = sf.create_named("Ames", OLD, FirstName="Alex")
        _sync(config_path, ledger, "sf", full=True)
        _past_this_second()
        stranger = org.create("Contact", LastName="Newowner", Email=OLD, Legal_Basis__c="Consent")
        _past_this_second()
        org.update(alex, Email=NEW)
        report = _sync(config_path, ledger, "sf")

        assert _old_left(ledger)
        assert _profiling(ledger) != "granted", "the new owner's grant became Alex's consent"
        assert report.counts.quarantined == 1
        assert [reason.startswith(SET_ASIDE) for reason, _ in _reasons(ledger, stranger)] == [True]
        # Read again unchanged, nothing more is said of it.
        assert _sync(config_path, ledger, "sf").counts.quarantined == 0
        assert _profiling(ledger) != "granted"
    finally:
        ledger.engine.dispose()


def test_a_grant_held_for_the_run_is_recorded_where_the_address_stays_theirs(
    sf: Any, config_path: Path
) -> None:
    """Another Contact of Alex's still shows old.box@: nothing is left, and the new Contact's
    grant, held for the run's reads, is Alex's once they end (as before: a duplicate of a
    person's contact speaks for them)."""
    _configure(sf, config_path, 1)
    ledger = _ledger(config_path)
    try:
        org = sf.sandbox.org
        sf.create_named("Ames", OLD, FirstName="Alex")  # read first: linked no later than Alex's
        _past_this_second()
        alex = sf.create_named("Ames", OLD, FirstName="Alex")
        _sync(config_path, ledger, "sf", full=True)
        _past_this_second()
        duplicate = org.create("Contact", LastName="Ames", Email=OLD, Legal_Basis__c="Consent")
        _past_this_second()
        org.update(alex, Email=NEW)
        report = _sync(config_path, ledger, "sf")

        assert not _old_left(ledger)
        assert _profiling(ledger) == "granted"
        assert (report.counts.quarantined, _reasons(ledger, duplicate)) == (0, [])
        # Kept in the record's snapshot as read: not recorded again, nor held again.
        again = _sync(config_path, ledger, "sf", full=True)
        assert (again.counts.evidence_recorded, again.counts.quarantined) == (0, 0)
    finally:
        ledger.engine.dispose()


@pytest.mark.parametrize("moved", [True, False])
def test_a_run_stopped_before_its_reads_end_leaves_the_grant_to_the_next(
    sf: Any, config_path: Path, monkeypatch: pytest.MonkeyPatch, moved: bool
) -> None:
    """The run fails on the page after the new owner's Contact: whether a page not read leaves
    the address is not known, so its grant is neither recorded nor lost: the record is
    quarantined for the next run to read again by id, which weighs it as any record."""
    _configure(sf, config_path, 1)
    ledger = _ledger(config_path)
    try:
        org = sf.sandbox.org
        if not moved:
            sf.create_named("Ames", OLD, FirstName="Alex")  # read first: linked no later
            _past_this_second()
        alex = sf.create_named("Ames", OLD, FirstName="Alex")
        _sync(config_path, ledger, "sf", full=True)
        _past_this_second()
        stranger = org.create("Contact", LastName="Newowner", Email=OLD, Legal_Basis__c="Consent")
        _past_this_second()
        org.update(alex, Email=NEW)
        _past_this_second()
        commit_page = SyncEngine._commit_page

        def failing(
            self: SyncEngine, conn: Any, mapping: Any, page: list[Any], *args: Any, **kw: Any
        ) -> None:
            if any(record.record_id == alex for record in page):
                raise FailpointHit("the page of the move")  # as the CRM's error, a kill
            commit_page(self, conn, mapping, page, *args, **kw)

        monkeypatch.setattr(SyncEngine, "_commit_page", failing)
        engine = open_sync(load_config(config_path), "sf", ledger)
        try:
            with pytest.raises(FailpointHit):
                engine.run()
        finally:
            engine.connector.close()
        monkeypatch.setattr(SyncEngine, "_commit_page", commit_page)
        assert _profiling(ledger) != "granted"
        assert [resolved for _, resolved in _reasons(ledger, stranger)] == [False]

        _sync(config_path, ledger, "sf")
        assert _old_left(ledger) is moved
        assert _profiling(ledger) == ("granted" if not moved else "not_applicable")
        reasons = _reasons(ledger, stranger)
        assert reasons[0][1], "the record held for the stopped run's reads was not read again"
        assert [reason.startswith(SET_ASIDE) for reason, _ in reasons[1:]] == ([True] if moved else [])
    finally:
        ledger.engine.dispose()
