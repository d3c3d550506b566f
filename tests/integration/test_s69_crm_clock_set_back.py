"""A CRM whose clock is set back further than the look-back window no longer hides the changes it
stamps afterwards (session 68's open finding). End to end: `consentsync sync` and `subject show`
through the CLI, against each vendor's sandbox over HTTPS, its clock set back between two runs.

The defect: the cursor holds positions stamped by the CRM's clock. Set back by 15 minutes (an
operator fixing a clock that ran fast, a virtual machine restored, NTP stepping), the CRM stamps
the next withdrawal 15 minutes before those positions, and the next run started its read the
look-back window (5 minutes; Salesforce's 10) before them: the withdrawal was never read, and
the CRM was left opted in, until someone ran `sync --full`. Now each cursor keeps the CRM's clock
offset measured from its answers' `Date` headers; a run measuring it set back since goes once
more from as far back, in the same run, and the run after reads on from the read's bound
(`Connector.resume_from`), not from a position the clock left behind. Dynamics (a delta token)
and SuperOffice (whole days) read it as before: their reads are checked alike."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from consentsync.sdk.crashtest import sync_command
from tests.conftest import Cli, running_harness

MAPPINGS = Path(__file__).resolve().parents[2] / "connectors"
MAPPING = {
    "dynamics": "consentsync_dynamics/mappings/contact.yaml",
    "hubspot": "consentsync_hubspot/mappings/contacts.yaml",
    "salesforce": "consentsync_salesforce/mappings/contact.yaml",
    "superoffice": "consentsync_superoffice/mappings/person.yaml",
    "vtiger": "consentsync_vtiger/mappings/contacts.yaml",
}
# Past every connector's look-back window (Salesforce's is the longest: 10 minutes).
SET_BACK = timedelta(minutes=15)


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """SQLite: where the read starts is decided before any SQL, and the cursor it is kept in is
    the same JSON on PostgreSQL (the engine's cursor tests run on both)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@contextmanager
def _crm(config_path: Path, vendor: str, **more: Any) -> Iterator[Any]:
    with running_harness(vendor) as harness:
        data = yaml.safe_load(config_path.read_text())
        data["connectors"] = [
            {
                "name": "crm",
                "vendor": vendor,
                "mappings": [str(MAPPINGS / MAPPING[vendor])],
                "settings": harness.connector_settings(),
                "signpost_lag_seconds": 0,  # the test syncs just after a change
                "mode": "two_way",
                "push_guard": {"max_records": None, "max_share": None},
                **more,
            }
        ]
        config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        yield harness


def _sync(cli: Cli) -> dict[str, Any]:
    time.sleep(1.1)  # past the second of the last change: the CRMs stamp whole seconds
    report: dict[str, Any] = cli.json("sync", "crm")
    assert report["status"] == "succeeded", report
    return report


def _withdrawn(cli: Cli, email: str) -> bool:
    view = cli.json("subject", "show", email)
    states = [p for p in view["purposes"] if p["purpose"] == "email_marketing"]
    return bool(states) and all(p["status"] == "withdrawn" for p in states)


@pytest.mark.parametrize("vendor", sorted(MAPPING))
def test_withdrawals_stamped_after_the_crms_clock_was_set_back_are_read(
    cli: Cli, config_path: Path, vendor: str
) -> None:
    with _crm(config_path, vendor) as harness:
        first, second = "first.setback@example.test", "second.setback@example.test"
        records = {email: harness.create_person(email) for email in (first, second)}
        _sync(cli)  # both people known, opted in; the cursor at the CRM's (correct) now
        assert not _withdrawn(cli, first) and not _withdrawn(cli, second)

        harness.skew_clock(-SET_BACK)
        harness.opt_out(records[first])  # stamped 15 minutes before the cursor's position
        _sync(cli)
        assert _withdrawn(cli, first), (
            f"a withdrawal made after the CRM's clock was set back {SET_BACK} was not read: it is "
            "stamped before the position the last read stored, less the look-back window"
        )

        # The next change, a run later: read from the bound of the read before (a moment of the
        # clock as it is now), not from the position the clock left behind.
        harness.opt_out(records[second])
        _sync(cli)
        assert _withdrawn(cli, second), "the run after the one that went back lost the next withdrawal"
        assert harness.read_opted_out(records[first]) and harness.read_opted_out(records[second])

        # Settled: read again, nothing new.
        counts = _sync(cli)["counts"]
        assert (counts["evidence_recorded"], counts["pushes_enqueued"]) == (0, 0), counts


@pytest.mark.parametrize("vendor", ["hubspot", "salesforce"])
def test_a_run_killed_before_it_went_back_leaves_the_next_run_to_go_back(
    cli: Cli, config_path: Path, vendor: str, tmp_path: Path
) -> None:
    """SIGKILL after the run read everything from the stored positions, before it moved the
    cursor back: the cursor it kept holds the clock offset measured before the clock was set
    back, so the next run, a new process, still knows, goes back, and reads the withdrawal. (A
    look-back of 2 s, the withdrawal stamped more than that before the killed run's bound: the
    next run's window behind that bound does not reach it; only going back does.)"""
    with _crm(config_path, vendor, lookback_seconds=2) as harness:
        email = "killed.setback@example.test"
        record = harness.create_person(email)
        other = harness.create_person("other.setback@example.test")
        _sync(cli)
        harness.skew_clock(-SET_BACK)
        harness.opt_out(record)
        harness.opt_out(other)
        time.sleep(3.5)  # the withdrawals more than the look-back window before the run's bound
        env = {key: value for key, value in os.environ.items() if key != "CONSENTSYNC_CONFIG"}
        env["CONSENTSYNC_FAILPOINTS"] = "sync.clock_set_back=kill@1"
        killed = subprocess.run(
            sync_command(config_path, "crm"), env=env, capture_output=True, text=True, timeout=120
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert not _withdrawn(cli, email)
        _sync(cli)
        assert _withdrawn(cli, email), "the run after the killed one did not go back for the clock"
