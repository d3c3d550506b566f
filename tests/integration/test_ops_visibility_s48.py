"""What ops see when a connector keeps failing, pushes are given up and the daemon gets a signal
(S48): `status` says since when and for how many runs a connector has failed and when it last
succeeded, /metrics shows the last success from the ledger (a restarted daemon, another process's
runs), open quarantined records and dead-lettered suppressions, and SIGHUP does not kill a daemon."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from consentsync.cli import main
from consentsync.config import load_config, write_starter
from consentsync.ledger.schema import quarantine, subjects, sync_runs
from consentsync.ledger.service import Ledger
from consentsync.observability import Metrics
from consentsync.sync.engine import RunReport
from consentsync.sync.status import connector_status
from tests.conftest import TEST_ERASURE_KEY, own_environment, stop
from tests.integration.helpers import free_port, local_session, outbox_row

ROOT = Path(__file__).resolve().parents[2]
CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
MAPPING = str(ROOT / "connectors/consentsync_salesforce/mappings/contact.yaml")


def _with_connector(config_path: Path, name: str = "sf") -> None:
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": name,
            "vendor": "salesforce",
            "mappings": [MAPPING],
            "settings": {
                "login_url": f"https://127.0.0.1:{free_port()}",
                "auth": "client_credentials",
                "client_id": "id",
                "client_secret": "${OPS48_SECRET}",
            },
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _run(ledger: Ledger, status: str, minutes_ago: float, connector: str = "sf") -> str:
    run_id = str(uuid.uuid4())
    started = ledger.clock() - timedelta(minutes=minutes_ago)
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(
                id=run_id,
                connector=connector,
                started_at=started,
                finished_at=None if status == "running" else started + timedelta(seconds=5),
                status=status,
                full_load=False,
                counts="{}",
                error="credentials: refused" if status == "failed" else None,
            )
        )
    return run_id


def _subject(ledger: Ledger) -> int:
    with ledger.engine.begin() as conn:
        return int(
            conn.execute(
                insert(subjects).values(uid=str(uuid.uuid4()), created_at=ledger.clock(), restricted=False)
            ).inserted_primary_key[0]
        )


def _outbox(ledger: Ledger, subject_id: int, **values: Any) -> None:
    outbox_row(ledger, subject_id, **{"connector": "sf", **values})


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _iso(ledger: Ledger, minutes_ago: float, seconds: float = 0) -> str:
    moment = ledger.clock() - timedelta(minutes=minutes_ago) + timedelta(seconds=seconds)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- status: since when, how many runs, the last success ----------------------------------------


def test_status_says_since_when_and_for_how_many_runs_a_connector_has_failed(
    ledger: Ledger, config_path: Path
) -> None:
    _with_connector(config_path)
    config = load_config(config_path)
    assert connector_status(config, ledger.engine, late_after=timedelta(hours=48))[0]["failing"] is None

    _run(ledger, "failed", 90)  # before the last success: not part of the streak
    success = _run(ledger, "succeeded", 60)
    first = _run(ledger, "failed", 50)
    _run(ledger, "skipped", 45)  # another process held the connector: no verdict
    _run(ledger, "crashed", 40)
    _run(ledger, "failed", 30)

    (row,) = connector_status(config, ledger.engine, late_after=timedelta(hours=48))
    assert row["last_run"]["status"] == "failed"
    assert row["last_success"] == {
        "id": success,
        "started_at": _iso(ledger, 60),
        "finished_at": _iso(ledger, 60, 5),
    }
    assert row["failing"] == {
        "since": _iso(ledger, 50),
        "runs": 3,
        "first_run": first,
        "last_success_at": _iso(ledger, 60, 5),
    }
    # The plain-text status says it too.
    text = CliRunner().invoke(main, ["--config", str(config_path), "status"]).output
    assert f"failing since {_iso(ledger, 50)}: 3 run(s) in a row; last success {_iso(ledger, 60, 5)}" in text

    _run(ledger, "succeeded", 10)  # it recovers: no longer failing
    (row,) = connector_status(config, ledger.engine, late_after=timedelta(hours=48))
    assert row["failing"] is None and row["last_success"]["started_at"] == _iso(ledger, 10)


def test_status_of_a_connector_that_never_succeeded(ledger: Ledger, config_path: Path) -> None:
    _with_connector(config_path)
    _run(ledger, "failed", 20)
    _run(ledger, "failed", 10)
    (row,) = connector_status(load_config(config_path), ledger.engine, late_after=timedelta(hours=48))
    assert row["last_success"] is None
    assert row["failing"]["runs"] == 2 and row["failing"]["since"] == _iso(ledger, 20)
    assert row["failing"]["last_success_at"] is None


def test_status_counts_dead_lettered_suppressions_apart(ledger: Ledger, config_path: Path) -> None:
    _with_connector(config_path)
    person = _subject(ledger)
    _outbox(ledger, person, status="dead")  # a withdrawal the CRM refused and that was given up
    _outbox(ledger, person, status="dead", suppression=False)
    _outbox(ledger, person)
    (row,) = connector_status(load_config(config_path), ledger.engine, late_after=timedelta(hours=48))
    assert (row["dead_letters"], row["dead_suppressions"], row["outbox_pending"]) == (2, 1, 1)


# -- /metrics ------------------------------------------------------------------------------------


def test_last_success_is_read_from_the_ledger_after_a_restart(ledger: Ledger) -> None:
    """A daemon restarted while its connector fails (or whose runs another process makes) still
    exposes when the connector last succeeded: alerts on its age keep working."""
    _run(ledger, "succeeded", 120)
    _run(ledger, "succeeded", 60, connector="other")
    _run(ledger, "failed", 30)
    metrics = Metrics(ledger.engine, clock=ledger.clock)
    metrics.watch(["sf"])
    samples = _samples(metrics.exposition().decode())
    stamp = (ledger.clock() - timedelta(minutes=120) + timedelta(seconds=5)).timestamp()
    assert samples[("consentsync_last_success_timestamp_seconds", (("connector", "sf"),))] == stamp
    # The later of the ledger's and this process's own.
    now = ledger.clock()
    metrics.observe_run(RunReport("r", "sf", "succeeded", now - timedelta(seconds=3), finished_at=now))
    samples = _samples(metrics.exposition().decode())
    assert samples[("consentsync_last_success_timestamp_seconds", (("connector", "sf"),))] == now.timestamp()


def test_metrics_show_open_quarantine_and_dead_lettered_suppressions(ledger: Ledger) -> None:
    run_id = _run(ledger, "succeeded", 5)
    with ledger.engine.begin() as conn:
        for resolved in (None, None, ledger.clock()):
            conn.execute(
                insert(quarantine).values(
                    run_id=run_id,
                    connector="sf",
                    object_type="Contact",
                    record_id=f"003{uuid.uuid4().hex[:15]}",
                    stage="read",
                    reason="unknown picklist value",
                    created_at=ledger.clock(),
                    resolved_at=resolved,
                )
            )
    person = _subject(ledger)
    _outbox(ledger, person, status="dead")
    _outbox(ledger, person, status="dead", suppression=False)
    metrics = Metrics(ledger.engine, clock=ledger.clock)
    metrics.watch(["sf", "quiet"])
    samples = _samples(metrics.exposition().decode())
    assert samples[("consentsync_quarantined_open", (("connector", "sf"),))] == 2
    assert samples[("consentsync_outbox_dead", (("connector", "sf"),))] == 2
    assert samples[("consentsync_outbox_dead_suppressions", (("connector", "sf"),))] == 1
    assert samples[("consentsync_quarantined_open", (("connector", "quiet"),))] == 0


# -- SIGHUP --------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return own_environment(tmp_path, TEST_ERASURE_KEY, drop=("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"))


def test_sighup_neither_kills_the_daemon_nor_pretends_to_reload(tmp_path: Path, env: dict[str, str]) -> None:
    """SIGHUP (a closed terminal, `systemctl reload`) left at its default killed the daemon at
    once: a run in hand crashed and no daemon ran on. It is logged and the daemon goes on; SIGTERM
    still stops it cleanly."""
    config_path = Path(env["CONSENTSYNC_CONFIG"])
    write_starter(config_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    _with_connector(config_path)
    env["OPS48_SECRET"] = "secret"
    init = subprocess.run([CONSENTSYNC, "init"], env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [CONSENTSYNC, "run", "--metrics-port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if local_session().get(url, timeout=2).status_code == 200:
                        break
                except Exception:
                    pass
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            process.send_signal(signal.SIGHUP)
            time.sleep(1.5)
            assert process.poll() is None, f"SIGHUP ended the daemon ({process.returncode})"
            assert local_session().get(url, timeout=5).status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            stop(process)
    text = log_path.read_text()
    assert '"daemon.signal_ignored"' in text and "SIGHUP" in text and "restart" in text


# -- the next run while a run longer than the interval is in hand ------------------------------


def test_next_run_while_a_run_longer_than_its_interval_is_in_hand_is_not_in_the_past(
    ledger: Ledger, config_path: Path
) -> None:
    """Times the schedule comes round while a run is in hand are skipped by the daemon (one run of a
    connector at a time): the next run is the first one after now, not one during the run (which
    the console's overview then called overdue while the run was busy)."""
    from consentsync.ledger.schema import connector_leases
    from consentsync.sync.heartbeat import Heartbeat
    from consentsync.sync.lease import this_process

    _with_connector(config_path)
    data = yaml.safe_load(config_path.read_text())
    data["connectors"][0]["schedule"] = {"interval_seconds": 60}
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    real_now = datetime.now(UTC)
    run_id = str(uuid.uuid4())
    with ledger.engine.begin() as conn:
        conn.execute(  # a full load begun ten minutes ago, still running (its lease is live)
            insert(sync_runs).values(
                id=run_id,
                connector="sf",
                started_at=real_now - timedelta(minutes=10),
                status="running",
                full_load=True,
                counts="{}",
            )
        )
        conn.execute(
            insert(connector_leases).values(
                connector="sf",
                token=1,
                run_id=run_id,
                holder=this_process(),
                acquired_at=real_now - timedelta(minutes=10),
                expires_at=real_now + timedelta(minutes=1),
            )
        )
    heartbeat = Heartbeat(ledger.engine, lambda: datetime.now(UTC), interval=timedelta(seconds=60))
    heartbeat.start()
    try:
        (row,) = connector_status(load_config(config_path), ledger.engine, late_after=timedelta(hours=48))
    finally:
        heartbeat.stop()
    assert row["daemon"], "the heartbeat says a daemon runs"
    assert row["last_run"]["status"] == "running"
    upcoming = datetime.fromisoformat(row["next_run"].replace("Z", "+00:00"))
    assert real_now < upcoming <= real_now + timedelta(seconds=61), row["next_run"]


def test_the_daemon_logs_a_dead_lettered_suppression_as_an_error(ledger: Ledger, config_path: Path) -> None:
    """A withdrawal the CRM kept refusing leaves the late-suppression check once dead-lettered
    (it is no longer pending): the daemon says, at error level after every run, that the CRM will
    not get it unless retried, naming the command; it names no record and no person."""
    from structlog.testing import capture_logs

    from consentsync.sync.daemon import Daemon

    _with_connector(config_path)
    person = _subject(ledger)
    _outbox(ledger, person, status="dead", record_id="003DEADWITHDRAWAL")
    _outbox(ledger, person, status="dead", suppression=False)
    daemon = Daemon(load_config(config_path), ledger)
    with capture_logs() as logs:
        daemon._warn_late_suppressions()
    (said,) = [entry for entry in logs if entry["event"] == "suppression.dead_lettered"]
    assert said["log_level"] == "error" and said["connector"] == "sf" and said["count"] == 1
    assert "consentsync outbox retry" in said["action"]
    assert "003DEADWITHDRAWAL" not in str(said)
