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

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
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


@pytest.mark.parametrize("vendor", ["salesforce", "superoffice"])
def test_a_withdrawal_stamped_behind_counts_so_though_the_clock_was_put_right_before_the_sync(
    cli: Cli, config_path: Path, vendor: str
) -> None:
    """Session 68 made a no stamped by a CRM clock behind ours count as late as that clock
    allows, measured when the value is read. Its open finding: a clock put right between the
    withdrawal and the sync measured nothing behind, and the withdrawal, stamped 2 minutes
    early, lost to the web-form consent it followed. The offset kept with the cursor says how
    the clock ran since the last read: the no counts as late as that allows."""
    from tests.integration import test_s68_crm_clock_behind_withdrawal as s68

    crm = s68.VENDORS[vendor]
    with s68._crm(config_path, crm) as harness:
        harness.skew_clock(timedelta(seconds=-120))
        records = crm.person(harness)
        s68._sync(cli)  # read while the clock runs 2 minutes behind
        consented = datetime.now(UTC)
        s68._web_form_consent(cli, consented)
        time.sleep(2)
        crm.withdraw(harness, records)  # stamped ~118 s before the consent
        harness.skew_clock(timedelta(0))  # the CRM's clock put right before the next sync
        s68._sync(cli)
        state = s68._marketing(cli)
        assert (state["status"], state["suppressed"]) == ("withdrawn", True), state
        s68._sync(cli)
        assert crm.opted_out(harness, records), "the CRM was left (or put back) opted in"
        s68._settled(cli, config_path)
        assert s68._marketing(cli)["status"] == "withdrawn"


def _settings(config_path: Path, **settings: Any) -> None:
    """The connector's settings, with ``settings`` (None: removed)."""
    data = yaml.safe_load(config_path.read_text())
    kept = data["connectors"][0]["settings"]
    for name, value in settings.items():
        kept.pop(name, None) if value is None else kept.__setitem__(name, value)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("cut", ["killed", "budget"])
def test_a_run_cut_after_it_read_on_past_the_position_still_leaves_the_next_to_go_back_far_enough(
    cli: Cli, config_path: Path, cut: str
) -> None:
    """Session 69 review: the clock set back 8 s (a look-back of 2 s), a withdrawal stamped
    behind the stored position, then, 12 s later, other withdrawals stamped past it. The run
    after reads those (its position moves on) and is cut before it goes back: killed, or
    stopped by its budget. The next run went back from its own start, past the first withdrawal,
    which was lost; now the cursor keeps where the reads started since the clock was last right."""
    with _crm(config_path, "hubspot", lookback_seconds=2) as harness:
        email = "first.cut@example.test"
        record = harness.create_person(email)
        others = [harness.create_person(f"other.{n}@example.test") for n in range(8)]
        _settings(config_path, page_size=2)
        _sync(cli)
        harness.skew_clock(-timedelta(seconds=8))
        harness.opt_out(record)  # behind the stored position, further than the look-back
        time.sleep(12)
        for other in others:  # past the stored position: the next read reads them
            harness.opt_out(other)
            time.sleep(0.3)
        time.sleep(1.1)
        if cut == "killed":
            env = {key: value for key, value in os.environ.items() if key != "CONSENTSYNC_CONFIG"}
            env["CONSENTSYNC_FAILPOINTS"] = "sync.clock_set_back=kill@1"
            killed = subprocess.run(
                sync_command(config_path, "crm"), env=env, capture_output=True, text=True, timeout=120
            )
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        else:
            _settings(config_path, budget={"per_run": 8})
            stopped = cli("sync", "crm", "--json")
            assert stopped.exit_code == 75, stopped.output
            _settings(config_path, budget=None)
        read_on = [n for n in range(8) if _withdrawn(cli, f"other.{n}@example.test")]
        assert read_on, "the cut run read on past the position"
        assert not _withdrawn(cli, email)
        _sync(cli)
        assert all(_withdrawn(cli, f"other.{n}@example.test") for n in range(8))
        assert _withdrawn(cli, email), "the run after the cut one did not go back far enough"


def test_a_full_run_after_the_clock_was_set_back_leaves_nothing_to_go_back_for(
    cli: Cli, config_path: Path
) -> None:
    """A read from the first record (``sync --full``) missed nothing of the set-back: its
    cursor takes the offset measured, and the runs after it read no more than a quiet run."""
    with _crm(config_path, "hubspot") as harness:
        harness.create_person("full.setback@example.test")
        _sync(cli)
        harness.skew_clock(-SET_BACK)
        time.sleep(1.1)
        assert cli.json("sync", "crm", "--full")["status"] == "succeeded"
        after_full, quiet = (_sync(cli)["counts"]["api_calls"] for _ in range(2))
        assert after_full == quiet, f"read once more after the full run: {after_full} calls, then {quiet}"


def test_a_plan_made_after_the_clock_was_set_back_shows_what_the_run_pushes(
    cli: Cli, config_path: Path, tmp_path: Path
) -> None:
    """The same person twice in Salesforce; one of the records opts out after the org's clock
    was set back. The plan goes back as the run does: it shows the push to the other record,
    and `apply` of it pushes that (a plan that missed it was refused as stale, exit 65)."""
    with _crm(config_path, "salesforce") as harness:
        first = harness.create_person("twice.setback@example.test")
        second = harness.create_person("twice.setback@example.test")
        _sync(cli)
        harness.skew_clock(-SET_BACK)
        harness.opt_out(first)
        time.sleep(1.1)
        plan_file = tmp_path / "plan.json"
        cli.ok("plan", "crm", "-o", str(plan_file))
        plan = json.loads(plan_file.read_text())
        assert plan["changes"], "the plan shows no push: it did not go back for the set-back clock"
        applied = cli("apply", str(plan_file), "--json")
        assert applied.exit_code == 0, applied.output
        assert harness.read_opted_out(second)
