"""The daemon: scheduled runs per connector, propagation between two CRMs within one interval,
and a clean stop that keeps what was committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.config import load_config
from consentsync.ledger.service import Ledger, utcnow
from consentsync.sync.daemon import Daemon
from consentsync.sync.engine import RunReport
from tests.integration.helpers import free_port, local_session, scrape_until, wait_until_held

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ["contact.yaml", "lead.yaml", "individual.yaml", "contact_point_type_consent.yaml"]
INTERVAL = 10


@pytest.fixture
def two_orgs() -> Iterator[tuple[SalesforceSandbox, SalesforceSandbox]]:
    # The same seed makes the same people in both orgs: one person, two CRMs.
    with SalesforceSandbox() as eu, SalesforceSandbox() as us:
        eu.org.seed(60, seed=21)
        us.org.seed(60, seed=21)
        yield eu, us


def _configure(config_path: Path, orgs: dict[str, SalesforceSandbox], interval: int = INTERVAL) -> Any:
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": name,
            "vendor": "salesforce",
            "mappings": [str(ROOT / "connectors/consentsync_salesforce/mappings" / m) for m in MAPPINGS],
            "settings": {
                "login_url": org.login_url,
                "auth": "client_credentials",
                "client_id": org.credentials.client_id,
                "client_secret": org.credentials.client_secret,
                "ca_bundle": str(org.ca_cert_path),
            },
            "signpost_lag_seconds": 0,
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
            "schedule": {"interval_seconds": interval},
        }
        for name, org in orgs.items()
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(config_path)


class Reports:
    def __init__(self) -> None:
        self.items: list[RunReport] = []
        self.changed = threading.Condition()

    def __call__(self, report: RunReport) -> None:
        with self.changed:
            self.items.append(report)
            self.changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.items), timeout)


def test_withdrawal_reaches_the_other_crm_within_one_interval(
    ledger: Ledger, config_path: Path, two_orgs: tuple[SalesforceSandbox, SalesforceSandbox]
) -> None:
    eu, us = two_orgs
    config = _configure(config_path, {"sf-eu": eu, "sf-us": us})
    ledger.clock = utcnow
    reports = Reports()
    daemon = Daemon(config, ledger, on_report=reports)
    daemon.start()
    try:
        assert reports.wait_for(lambda items: {r.connector for r in items} == {"sf-eu", "sf-us"}, 60)
        assert all(r.status == "succeeded" for r in reports.items), [r.error for r in reports.items]
        # Someone both orgs know, whom the ledger allows to be emailed.
        email = next(
            c["Email"].lower()
            for c in us.org.records("Contact")
            if c.get("Email") and not c.get("HasOptedOutOfEmail")
        )
        eu_contact = next(c for c in eu.org.records("Contact") if str(c.get("Email")).lower() == email)
        us_ids = [c["Id"] for c in us.org.records("Contact") if str(c.get("Email")).lower() == email]
        captured = time.monotonic()
        eu.org.update(eu_contact["Id"], {"HasOptedOutOfEmail": True})

        def email_state() -> dict[str, Any]:
            view = ledger.subject_view(email)
            return next(
                p for p in view["purposes"] if (p["purpose"], p["channel"]) == ("email_marketing", "email")
            )

        # The EU connector's next run (within its interval) records the withdrawal in the ledger ...
        while time.monotonic() < captured + INTERVAL + 10 and email_state()["status"] != "withdrawn":
            time.sleep(0.2)
        recorded = time.monotonic()
        assert email_state()["status"] == "withdrawn", "the EU run never recorded the withdrawal"
        # ... and the US connector writes it within one of its intervals plus 10 seconds.
        while time.monotonic() < recorded + INTERVAL + 10:
            if all(us.org.get(i)["HasOptedOutOfEmail"] for i in us_ids):
                break
            time.sleep(0.2)
        propagated = time.monotonic() - recorded
        assert all(us.org.get(i)["HasOptedOutOfEmail"] for i in us_ids), "the US org never got the withdrawal"
        assert propagated <= INTERVAL + 10, propagated
        print(f"recorded {recorded - captured:.1f} s after capture, in the US org {propagated:.1f} s later")
    finally:
        daemon.stop()
    assert not daemon.scheduler.running


def test_stop_lets_the_page_in_hand_commit_and_the_next_run_resume(
    ledger: Ledger, config_path: Path, two_orgs: tuple[SalesforceSandbox, SalesforceSandbox]
) -> None:
    eu, _us = two_orgs
    config = _configure(config_path, {"sf-eu": eu}, interval=3600)
    ledger.clock = utcnow
    # Slow query pages (the four objects' first pages are asked side by side): the run is still
    # reading when stop comes, a second in.
    eu.faults.update(delay=2.0, delay_kinds=("query", "queryMore"))
    reports = Reports()
    daemon = Daemon(config, ledger, on_report=reports)
    daemon.start()
    time.sleep(1.0)
    daemon.stop()
    assert reports.wait_for(lambda items: len(items) == 1, 30)
    first = reports.items[0]
    assert first.status == "stopped", first.error
    eu.faults.reset()
    second = Daemon(config, ledger, on_report=reports).run_connector("sf-eu")
    assert second is not None and second.status == "succeeded"
    assert second.counts.evidence_duplicates == 0
    total = sum(eu.org.count(kind) for kind in ("Contact", "Lead", "Individual", "ContactPointTypeConsent"))
    # Nothing read twice beyond our own echoes, nothing lost.
    assert first.counts.read + second.counts.read >= total


def test_run_command_serves_health_and_metrics_and_stops_on_sigterm(
    ledger: Ledger, config_path: Path, two_orgs: tuple[SalesforceSandbox, SalesforceSandbox]
) -> None:
    import os
    import signal
    import subprocess
    import sys

    eu, _us = two_orgs
    _configure(config_path, {"sf-eu": eu}, interval=3600)
    port = free_port()
    consentsync = str(Path(sys.executable).parent / "consentsync")
    process = subprocess.Popen(
        [consentsync, "--config", str(config_path), "run", "--metrics-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CONSENTSYNC_CONFIG": ""},
    )
    session = local_session()
    try:
        metrics = scrape_until(
            session, port, lambda text: 'consentsync_runs_total{connector="sf-eu",status="succeeded"}' in text
        )
        assert 'consentsync_runs_total{connector="sf-eu",status="succeeded"} 1.0' in metrics
        assert session.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        assert session.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        status = subprocess.run(
            [consentsync, "--config", str(config_path), "status", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert '"status": "succeeded"' in status.stdout and '"next_run"' in status.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "daemon.stopped" in out  # the daemon logs to stdout
    assert eu.credentials.client_secret not in out + err


def test_two_processes_never_run_the_same_connector_at_once(
    ledger: Ledger, config_path: Path, two_orgs: tuple[SalesforceSandbox, SalesforceSandbox], tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    eu, _us = two_orgs
    _configure(config_path, {"sf-eu": eu}, interval=3600)
    consentsync = str(Path(sys.executable).parent / "consentsync")
    command = [consentsync, "--config", str(config_path), "sync", "sf-eu"]
    env = {**os.environ, "CONSENTSYNC_CONFIG": ""}
    # The first run is held after reading its first page: the second starts while it runs,
    # however fast the run is.
    held = tmp_path / "failpoints"
    held.mkdir()
    holding = {**env, "CONSENTSYNC_FAILPOINTS": "sync.page.read=hold@1"}
    holding["CONSENTSYNC_FAILPOINT_DIR"] = str(held)
    first = subprocess.Popen(command, env=holding, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = held / "sync.page.read.held"
    wait_until_held(first, marker, "its first page")
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    marker.unlink()
    _out, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode == 75, second.stderr
    assert "another process is running connector 'sf-eu'" in second.stderr
    with ledger.engine.connect() as conn:
        runs = conn.exec_driver_sql("SELECT status FROM sync_runs ORDER BY started_at").scalars().all()
    # The refused process did not even start a run: its row says it was skipped, and why.
    assert sorted(runs) == ["skipped", "succeeded"]


def test_a_run_stopped_by_a_full_disk_is_no_internal_error_to_the_daemon(
    ledger: Ledger,
    config_path: Path,
    two_orgs: tuple[SalesforceSandbox, SalesforceSandbox],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine says a full disk in one line (sync.failed, no frames); the daemon, which gets
    the error raised on, says the same words, not "internal: OSError" with a traceback event."""
    import errno

    import structlog

    from consentsync.sync import engine as engine_module

    eu, _us = two_orgs
    config = _configure(config_path, {"sf-eu": eu}, interval=3600)

    def full(self: Any, *_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/var/lib/consentsync/state")

    monkeypatch.setattr(engine_module.SyncEngine, "_pull", full)
    with structlog.testing.capture_logs() as logged:
        report = Daemon(config, ledger).run_connector("sf-eu")
    assert report is not None and report.status == "failed"
    assert (report.error or "").startswith("disk: "), report.error
    assert "/var/lib/consentsync/state" in (report.error or "")
    events = [entry["event"] for entry in logged]
    assert "sync.run_raised" not in events and "sync.crashed" not in events, events
