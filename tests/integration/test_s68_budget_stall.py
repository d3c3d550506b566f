"""A ``budget.per_run`` too small for a run's reads stalled the connector for good: every run
spent its calls reading, stopped on its budget (exit 75, "retry later") and pushed none of the
writes owed, a withdrawal among them, run after run, with nothing said but "stopped". The second
run in a row that stops on its own budget without headway (nothing new read, no pending write
sent, settled or tried) while writes are owed is failed as the admin's to fix (exit 2, one line
naming the setting, its value and the calls the reads took). One such run alone stays "stopped"
(a run may pay calls the next does not: the hour's describes); so does a run that read new
changes, and one whose writes are held anyway (observe mode)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_vtiger.sandbox.server import VtigerSandbox

from consentsync import exit_codes, yamlfile
from consentsync.domain import ConsentStatus, Evidence
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY, running_harness
from tests.integration.helpers import shipped_engine

# The engine's rule against one CRM's sandbox; the ledger's SQL runs on PostgreSQL elsewhere.
pytestmark = SQLITE_ONLY

MAPPINGS = ["contacts.yaml", "leads.yaml"]


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def _engine(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, per_run: int | None, **options: Any
) -> SyncEngine:
    settings: dict[str, Any] = {"max_attempts": 4}
    if per_run is not None:
        settings["budget"] = {"per_run": per_run}
    chosen = SyncOptions(batch_size=40, signpost_lag_seconds=0, **options)
    return shipped_engine(ledger, config_path, sandbox, "vt", "vtiger", MAPPINGS, settings, chosen)


def _withdraw(ledger: Ledger, email: str) -> None:
    now = datetime.now(UTC)
    ledger.record(
        Identity(email=email),
        Evidence.from_web_form(ConsentStatus.WITHDRAWN, now - timedelta(seconds=5), now),
    )


def _reads_of_a_quiet_run(ledger: Ledger, config_path: Path, sandbox: VtigerSandbox) -> int:
    """The calls a run with nothing new to read and nothing to push makes (its reads)."""
    sandbox.calls.clear()
    report = _engine(ledger, config_path, sandbox, None).run()
    assert report.status == "succeeded", report.error
    assert report.counts.pushed == 0
    return report.counts.api_calls


def test_a_budget_spent_on_reads_run_after_run_is_said_to_be_the_admins_to_fix(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    crm = sandbox.crm
    emails = [f"p{i}@example.test" for i in range(3)]
    records = [crm.create("Contacts", lastname=f"P{i}", email=email) for i, email in enumerate(emails)]
    report = _engine(ledger, config_path, sandbox, None).run(full=True)
    assert report.status == "succeeded", report.error
    reads = _reads_of_a_quiet_run(ledger, config_path, sandbox)
    _withdraw(ledger, emails[0])

    first = _engine(ledger, config_path, sandbox, reads).run()
    assert first.counts.pushed == 0, "calibration: the budget was meant to be spent on the reads"
    # It queued the withdrawal (headway): stopped, to resume.
    assert (first.status, first.exit_code, first.counts.stalled_runs) == ("stopped", exit_codes.STOPPED, 0)
    second = _engine(ledger, config_path, sandbox, reads).run()
    assert (second.status, second.exit_code, second.counts.stalled_runs) == ("stopped", exit_codes.STOPPED, 1)
    third = _engine(ledger, config_path, sandbox, reads).run()
    assert (third.status, third.exit_code) == ("failed", exit_codes.CONFIG), (third.status, third.error)
    assert third.counts.stalled_runs == 2
    assert third.error is not None and "\n" not in third.error
    assert f"budget.per_run {reads}" in third.error and "'vt'" in third.error, third.error
    assert crm.get(records[0])["emailoptout"] != "1"  # nothing written, as before

    # Raised above the reads: the withdrawal goes out.
    done = _engine(ledger, config_path, sandbox, reads + 3).run()
    assert done.status == "succeeded", done.error
    assert crm.get(records[0])["emailoptout"] == "1"


def test_runs_reading_through_a_backlog_before_their_budget_ran_out_are_only_stopped(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    """Headway: each run reads further through a backlog of records whose consent says nothing
    new (their reads moved on), run after run. Each is "stopped", exit 75; the next goes on."""
    crm = sandbox.crm
    start = datetime.now(UTC) - timedelta(hours=1)
    crm.create("Contacts", lastname="First", email="first@example.test", at=start)
    report = _engine(ledger, config_path, sandbox, None).run(full=True)
    assert report.status == "succeeded", report.error
    reads = _reads_of_a_quiet_run(ledger, config_path, sandbox)
    _withdraw(ledger, "first@example.test")
    for i in range(2500):  # pages of them, a second each: more than a run's budget reads
        crm.create(
            "Contacts", lastname=f"N{i}", email=f"n{i}@example.test", at=start + timedelta(seconds=i + 1)
        )
    runs = [_engine(ledger, config_path, sandbox, reads + 1).run() for _ in range(4)]
    seen = [(run.status, run.exit_code, run.counts.read) for run in runs]
    stopped = [run for run in runs if run.status == "stopped"]
    assert len(stopped) >= 3 and all(run.counts.read > 0 for run in stopped), f"calibration: {seen}"
    assert all(run.exit_code in (exit_codes.STOPPED, None) for run in runs), seen
    done = _engine(ledger, config_path, sandbox, None).run()
    assert done.status == "succeeded", done.error


@pytest.mark.parametrize("mode", ["two_way", "observe"])
def test_a_budget_below_the_reads_is_said_so_with_nothing_owed(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, mode: str
) -> None:
    """Nothing owed to the CRM (or held: observe mode sends nothing), the budget spent before
    the reads end: a no ticked on a lead, read after the contacts, never reached the ledger, run
    after run "stopped". The second such run fails, saying the reads never finished."""
    crm = sandbox.crm
    crm.create("Contacts", lastname="Read", email="read@example.test")
    lead = crm.create("Leads", lastname="Later", email="later@example.test")
    report = _engine(ledger, config_path, sandbox, None, mode=mode).run(full=True)
    assert report.status == "succeeded", report.error
    reads = _reads_of_a_quiet_run(ledger, config_path, sandbox)
    crm.revise(lead, {"emailoptout": "1"})
    short = reads - 1  # spent before the reads end
    runs = [_engine(ledger, config_path, sandbox, short, mode=mode).run() for _ in range(3)]
    seen = [(run.status, run.exit_code, run.counts.stalled_runs) for run in runs]
    assert [run.exit_code for run in runs] == [exit_codes.STOPPED, exit_codes.CONFIG, exit_codes.CONFIG], seen
    assert "reads never finished" in (runs[1].error or ""), runs[1].error
    assert "writes owed" not in (runs[1].error or "")
    done = _engine(ledger, config_path, sandbox, None, mode=mode).run()
    assert done.status == "succeeded" and done.counts.evidence_recorded >= 1, (done.status, done.counts)


@pytest.mark.parametrize("vendor", ["dynamics"])
def test_a_connector_whose_cursor_moves_every_run_is_told_so_too(
    vendor: str, tmp_path: Path, ledger_url: str
) -> None:
    """The same through a sandbox harness whose stored position changes with every run that
    reads nothing new (Dynamics' delta token): the runs' counts say there was no headway all the
    same. (A quiet run's calls less one: the reads alone, without the token the first takes.)
    (The kit's config keeps its SQLite ledger beside it: ``ledger_url``,
    the module's SQLite variant, is not used.)"""
    del ledger_url
    with running_harness(vendor) as harness:
        email = f"stall.{vendor}@example.test"
        harness.create_named("Stall", email)
        config = write_sync_config(harness, tmp_path)
        report = open_sync_engine(config).run(full=True)
        assert report.status == "succeeded", report.error
        time.sleep(1.1)  # past the CRMs' whole-second stamps
        quiet = open_sync_engine(config).run()
        assert quiet.status == "succeeded", quiet.error
        data = yamlfile.loads(config.read_text())
        data["connectors"][0]["settings"]["budget"] = {"per_run": quiet.counts.api_calls - 1}
        config.write_text(yamlfile.dumps(data))
        engine = open_sync_engine(config)
        _withdraw(engine.ledger, email)
        reports = [open_sync_engine(config).run() for _ in range(4)]
        assert not any(r.counts.pushed for r in reports), "calibration: the budget was meant for the reads"
        seen = [(r.status, r.counts.stalled_runs) for r in reports]
        assert reports[-1].exit_code == exit_codes.CONFIG, seen
        assert "budget.per_run" in (reports[-1].error or "")
