"""A CRM whose clock is off ours: its records carry its own time, and `consentsync sync` bounds
its reads by that time (the Date headers of the CRM's answers), so a change committed late is
read by the next run however far behind the CRM's clock runs, and a CRM clock ahead of ours
makes no run read a change before its time, skip one, or record one twice. Real processes
(`consentsync sync`), against the Salesforce sandbox with its clock set off ours."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import create_engine, select

from consentsync.domain import as_utc
from consentsync.ledger.engine import normalise_url
from consentsync.ledger.schema import crm_links, sync_cursors
from tests.conftest import Cli
from tests.integration.test_cli_sync import connect_sandbox

# The look-back window the connectors default to (Salesforce's own is 10 minutes).
LOOKBACK_SECONDS = 300


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """SQLite only: the bound is computed before any SQL (the cursors it is kept in are checked
    on PostgreSQL by the engine's own tests)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _configure(sandbox: SalesforceSandbox, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connect_sandbox(sandbox, config_path, monkeypatch)
    data = yaml.safe_load(config_path.read_text())
    data["connectors"][0]["lookback_seconds"] = LOOKBACK_SECONDS
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _sync(config_path: Path) -> dict[str, Any]:
    command = [str(Path(sys.executable).parent / "consentsync"), "--config", str(config_path)]
    done = subprocess.run([*command, "sync", "sf", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["status"] == "succeeded", report
    return report


def _ledger(config_path: Path) -> Any:
    url = yaml.safe_load(config_path.read_text())["ledger"]["url"]
    return create_engine(normalise_url(url))


def _contacts_linked(config_path: Path) -> set[str]:
    ledger = _ledger(config_path)
    with ledger.connect() as conn:
        rows = conn.execute(select(crm_links.c.record_id).where(crm_links.c.object_type == "Contact")).all()
    ledger.dispose()
    return {row.record_id for row in rows}


def _contacts_read_until(config_path: Path) -> datetime:
    ledger = _ledger(config_path)
    with ledger.connect() as conn:
        stored = conn.execute(
            select(sync_cursors.c.cursor).where(sync_cursors.c.object_type == "Contact")
        ).scalar_one()
    ledger.dispose()
    return as_utc(datetime.fromisoformat(orjson.loads(stored)["read_until"]))


def _read_past(org: Any, records: list[str], config_path: Path) -> bool:
    """Whether the Contact read went past ``records`` (stamped alike). It stops short of them
    where Get Updated already covers the minute a transaction still open began in (the late
    record's: the minute turned between its stamp and the run)."""
    return _contacts_read_until(config_path) >= org.get(records[0])["SystemModstamp"]


def _people(org: Any, prefix: str, count: int) -> list[str]:
    return [
        org.create("Contact", LastName=f"{prefix.title()} {n}", Email=f"{prefix}.{n}@example.test")
        for n in range(count)
    ]


def test_a_change_committed_late_is_read_when_the_crms_clock_runs_ten_minutes_behind(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox() as sandbox:
        sandbox.skew_clock(timedelta(minutes=-10))
        _configure(sandbox, config_path, monkeypatch)
        org = sandbox.org
        _people(org, "before", 2)
        # A transaction that began now and commits after the next run: stamped now, CRM time.
        late = org.begin_create(
            "Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True
        )
        time.sleep(1.1)  # whole seconds: the late record's second is behind the cursor's
        after = _people(org, "after", 3)
        time.sleep(1.1)
        _sync(config_path)
        linked = _contacts_linked(config_path)
        assert late not in linked and (not _read_past(org, after, config_path) or set(after) <= linked)
        # The read's bound is kept as a moment of the CRM's clock, not of ours (its future).
        assert _contacts_read_until(config_path) <= sandbox.now()
        org.commit(late)
        time.sleep(1.1)
        _sync(config_path)
        assert {late, *after} <= _contacts_linked(config_path), (
            "a record committed late was never read: the CRM's clock runs 10 minutes behind ours, "
            f"more than the {LOOKBACK_SECONDS} s look-back window"
        )
        third = _sync(config_path)
        counts = third["counts"]
        assert counts["evidence_recorded"] == counts["pushes_enqueued"] == 0
        assert counts["read"] == counts["unchanged_records"], "a re-read record was taken as changed"


def test_a_crm_clock_ahead_of_ours_reads_nothing_early_skips_nothing_and_records_nothing_twice(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Far enough ahead that the first run reads before our clock reaches the stamps even on a
    # loaded machine (at 5 s, a first run slow to start under load read them, "early", rightly).
    ahead = timedelta(seconds=12)
    with SalesforceSandbox() as sandbox:
        sandbox.skew_clock(ahead)
        _configure(sandbox, config_path, monkeypatch)
        org = sandbox.org
        before = _people(org, "before", 2)
        late = org.begin_create(
            "Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True
        )
        time.sleep(1.1)
        after = _people(org, "after", 3)
        # Stamped in our future: a run now keeps to its own clock and leaves them to a later run.
        first = _sync(config_path)
        assert not (set(before) | set(after)) & _contacts_linked(config_path), first["counts"]
        time.sleep(ahead.total_seconds() + 1.2)  # our clock passes their stamps
        _sync(config_path)
        linked = _contacts_linked(config_path)
        assert set(before) <= linked and late not in linked
        assert not _read_past(org, after, config_path) or set(after) <= linked
        assert _contacts_read_until(config_path) <= sandbox.now()
        org.commit(late)
        time.sleep(1.1)
        _sync(config_path)
        assert {late, *after} <= _contacts_linked(config_path), "a record committed late was never read"
        fourth = _sync(config_path)
        counts = fourth["counts"]
        assert counts["evidence_recorded"] == counts["pushes_enqueued"] == 0
        assert counts["read"] == counts["unchanged_records"], "a re-read record was taken as changed"
