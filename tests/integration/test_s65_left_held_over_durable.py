"""Grants held for a run's reads (a record new to the ledger that may speak for its person only
through an address a later page of the run leaves: docs/policy.md, "An address a person no longer
holds") are never lost with the run: the record's page quarantines it in its own transaction, for
the next run to read again by id, and the weighing deletes the row in the transaction that records
or sets the grants aside (session 65 review). Before: a run SIGKILLed after the record's page, or
a ledger lost while weighing, lost the grant for good (its snapshot, without it, matched the CRM).

Alex has two Contacts showing old.box@; a duplicate Contact (old.box@, with a consent) is made,
then one of Alex's Contacts moves to a new address (the address stays Alex's: the other still
shows it); batch_size 1, so the duplicate's page commits before the move's."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from consentsync.app import open_sync
from consentsync.config import load_config
from consentsync.demo_crms import _past_this_second
from consentsync.ledger.schema import crm_links, crm_snapshots
from consentsync.sdk.crashtest import sync_command
from consentsync.sync.engine import SyncEngine
from tests.conftest import TEST_ERASURE_KEY, own_environment
from tests.integration.test_s64_left_address_sandboxes import OLD, _ledger, _sync
from tests.integration.test_s64b_left_address_sandboxes import _old_left
from tests.integration.test_s65_left_across_pages import _configure, _profiling, _reasons
from tests.integration.test_s65_left_across_pages import sf as sf  # the sandbox fixture

# A sitecustomize that SIGKILLs ``consentsync sync`` as the page holding REVIEW_KILL_AT_RECORD is
# about to commit.
HOOK = str(Path(__file__).with_name("kill_at_record"))


def _evidence_view(ledger: Any, record_id: str) -> str | None:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(crm_snapshots.c.evidence)
            .join(crm_links, crm_links.c.id == crm_snapshots.c.link_id)
            .where(crm_links.c.record_id == record_id)
        ).scalar()


def test_a_held_grant_survives_a_run_killed_before_its_reads_end(
    sf: Any, config_path: Path, tmp_path: Path
) -> None:
    _configure(sf, config_path, 1)
    ledger = _ledger(config_path)
    try:
        org = sf.sandbox.org
        sf.create_named("Ames", OLD, FirstName="Alex")
        _past_this_second()
        alex = sf.create_named("Ames", OLD, FirstName="Alex")
        _sync(config_path, ledger, "sf", full=True)
        _past_this_second()
        dup = org.create("Contact", LastName="Ames", Email=OLD, Legal_Basis__c="Consent")
        _past_this_second()
        # Another change between: on SQLite the run's writer defers one page's commit to the next.
        org.create("Contact", LastName="Other", Email="someone.else@example.org")
        _past_this_second()
        org.update(alex, Email="alex.ames@example.org")
        _past_this_second()

        env = own_environment(tmp_path, TEST_ERASURE_KEY)
        env.update(CONSENTSYNC_CONFIG=str(config_path), REVIEW_KILL_AT_RECORD=alex)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [HOOK, env.get("PYTHONPATH")]))
        killed = subprocess.run(sync_command(config_path, "sf"), env=env, capture_output=True, timeout=180)
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
        after_kill = (_evidence_view(ledger, dup), _reasons(ledger, dup))
        # Its page committed (PostgreSQL) and quarantined it, or went with the kill (SQLite's
        # writer commits a page with the next): either way the next run takes its grant up.
        assert after_kill[0] is None or after_kill[1], f"the held record was not quarantined: {after_kill}"

        _sync(config_path, ledger, "sf")
        _sync(config_path, ledger, "sf")
        incremental = (_old_left(ledger), _profiling(ledger))
        _sync(config_path, ledger, "sf", full=True)
        full = _profiling(ledger)
        assert incremental == (False, "granted") and full == "granted", (
            f"grant of Alex's duplicate lost: incremental {incremental}, full {full}, "
            f"quarantine rows {_reasons(ledger, dup)}"
        )
    finally:
        ledger.engine.dispose()


def test_a_held_grant_survives_a_ledger_lost_while_weighing(
    sf: Any, config_path: Path, monkeypatch: Any
) -> None:
    _configure(sf, config_path, 1)
    ledger = _ledger(config_path)
    try:
        org = sf.sandbox.org
        sf.create_named("Ames", OLD, FirstName="Alex")
        _past_this_second()
        alex = sf.create_named("Ames", OLD, FirstName="Alex")
        _sync(config_path, ledger, "sf", full=True)
        _past_this_second()
        dup = org.create("Contact", LastName="Ames", Email=OLD, Legal_Basis__c="Consent")
        _past_this_second()
        org.update(alex, Email="alex.ames@example.org")
        _past_this_second()

        weigh = SyncEngine._weigh_held_over

        def failing(self: SyncEngine, report: Any, *, dry_run: bool) -> None:
            def broken(*a: Any, **k: Any) -> Any:
                raise OperationalError(
                    "INSERT ...", {}, Exception("server closed the connection unexpectedly")
                )

            monkeypatch.setattr(self.ledger, "record_in", broken)
            weigh(self, report, dry_run=dry_run)

        monkeypatch.setattr(SyncEngine, "_weigh_held_over", failing)
        engine = open_sync(load_config(config_path), "sf", ledger)
        try:
            report = engine.run()
        finally:
            engine.connector.close()
        assert report.status == "failed", "the ledger's loss did not fail the run"
        assert _reasons(ledger, dup), "the held record was not left quarantined for the next run"
        monkeypatch.undo()
        _sync(config_path, ledger, "sf")
        _sync(config_path, ledger, "sf", full=True)
        assert _profiling(ledger) == "granted", "the held grant was lost with the failed run"
    finally:
        ledger.engine.dispose()
