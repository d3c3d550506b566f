"""The daemon tells the truth (issue 15): every log line of a real `consentsync run` is one JSON
object (APScheduler's too, a traceback as a field), every failed, skipped or crashed run leaves a
row with its reason, and `status`, `runs list`, /metrics and /readyz show them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select

from consentsync.config import load_config
from consentsync.ledger.schema import connector_leases, sync_runs
from consentsync.ledger.service import Ledger
from consentsync.observability import failing_connectors, failure_streak
from consentsync.sync.heartbeat import Heartbeat, running_daemons
from consentsync.sync.lease import this_process
from consentsync.sync.locks import connector_lock
from consentsync.sync.runs import settle_crashed
from tests.integration.helpers import free_port, local_session, scrape_until

ROOT = Path(__file__).resolve().parents[2]
CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
MAPPING = str(
    next(
        path
        for path in (
            ROOT / "connectors/consentsync_salesforce/mappings/contact.yaml",
            ROOT / "mappings/salesforce/contact.yaml",
        )
        if path.exists()
    )
)


def _connector(name: str, org: SalesforceSandbox, mappings: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "vendor": "salesforce",
        "mappings": mappings,
        "settings": {
            "login_url": org.login_url,
            "auth": "client_credentials",
            "client_id": org.credentials.client_id,
            "client_secret": "${TRUTH_SF_SECRET}",
            "ca_bundle": str(org.ca_cert_path),
        },
        "signpost_lag_seconds": 0,
        "schedule": {"interval_seconds": 3600},
    }


def _write(config_path: Path, connectors: list[dict[str, Any]]) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = connectors
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _both_failed(metrics: str) -> bool:
    """Whether both broken connectors' failed runs show in the daemon's metrics."""
    return all(
        _metric(metrics, "consentsync_runs_total", connector=name, status="failed")
        for name in ("sf-crashes", "sf-unmapped")
    )


def _status(config_path: Path, env: dict[str, str]) -> tuple[int, Any, str]:
    done = subprocess.run(
        [CONSENTSYNC, "--config", str(config_path), "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def test_daemon_logs_json_lines_records_every_failure_and_is_not_ready(
    ledger: Ledger, config_path: Path, tmp_path: Path
) -> None:
    if ledger.engine.dialect.name != "sqlite":
        pytest.skip("the daemon's process is the same on PostgreSQL; its ledger paths are tested below")
    with SalesforceSandbox() as org:
        org.org.seed(20, seed=3)
        _write(
            config_path,
            [
                # Fails in the middle of its run, with an error nobody foresaw (a traceback).
                _connector("sf-crashes", org, [MAPPING]),
                # Fails before its first API call: its mapping file is missing.
                _connector("sf-unmapped", org, [str(tmp_path / "missing.yaml")]),
            ],
        )
        port = free_port()
        env = {
            **os.environ,
            "CONSENTSYNC_CONFIG": "",
            "TRUTH_SF_SECRET": org.credentials.client_secret,
            "CONSENTSYNC_FAILPOINTS": "sync.page.read=raise",
            "CONSENTSYNC_LOG_FORMAT": "json",
        }
        env.pop("CONSENTSYNC_LOG_LEVEL", None)
        process = subprocess.Popen(
            [
                CONSENTSYNC,
                "--config",
                str(config_path),
                "run",
                "--metrics-port",
                str(port),
                "--unready-after",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        session = local_session()
        try:
            metrics = scrape_until(session, port, _both_failed, pause=0.2)
            assert _metric(metrics, "consentsync_runs_total", connector="sf-crashes", status="failed") == 1
            assert _metric(metrics, "consentsync_runs_total", connector="sf-unmapped", status="failed") == 1
            for name in ("sf-crashes", "sf-unmapped"):
                assert _metric(metrics, "consentsync_last_run_status", connector=name, status="failed") == 1
                assert (
                    _metric(metrics, "consentsync_last_run_status", connector=name, status="succeeded") == 0
                )
                assert _metric(metrics, "consentsync_consecutive_failed_runs", connector=name) == 1
            ready = session.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            assert ready.status_code == 503
            assert ready.json()["connectors"] == ["sf-crashes", "sf-unmapped"]
            code, rows, err = _status(config_path, env)
            by_name = {row["connector"]: row for row in rows}
            assert by_name["sf-crashes"]["daemon"] and by_name["sf-crashes"]["next_run"] is not None
            assert by_name["sf-crashes"]["last_run"]["status"] == "failed"
            assert by_name["sf-crashes"]["last_run"]["error"].startswith("internal: FailpointHit")
            assert (
                by_name["sf-unmapped"]["last_run"]["error"]
                == f"config: {tmp_path / 'missing.yaml'}: mapping file not found"
            )
            # status validates what it reports: the missing mapping is an error, in one line.
            assert (
                code == 2
                and err.strip() == f"consentsync: error: {tmp_path / 'missing.yaml'}: mapping file not found"
            )
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert err == ""  # logs go to stdout, every line of them
    lines = [json.loads(line) for line in out.splitlines()]  # every line is one JSON object
    events = {line["event"] for line in lines}
    assert {"daemon.started", "daemon.stopped", "sync.failed", "sync.crashed"} <= events
    assert any(line.get("logger", "").startswith("apscheduler") for line in lines)
    # Not a line of Alembic's own set-up (seven "setup plugin ..." lines at every start).
    assert not [line for line in lines if line.get("logger", "").startswith("alembic.runtime.plugins")]
    crashed = next(line for line in lines if line["event"] == "sync.crashed")
    frames = crashed["exception"][0]["frames"]
    assert crashed["exception"][0]["exc_type"] == "FailpointHit"
    assert any(frame["name"] == "failpoint" for frame in frames)
    assert all("locals" not in frame for frame in frames)  # a local may hold a secret
    assert org.credentials.client_secret not in out
    # The daemon is gone: status says so instead of a next run nobody will make.
    _code, rows, _err = _status(config_path, env)
    assert all(row["daemon"] == [] and row["next_run"] is None for row in rows)


def _running_row(ledger: Ledger, connector: str) -> str:
    run_id = str(uuid.uuid4())
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(
                id=run_id,
                connector=connector,
                started_at=ledger.clock(),
                status="running",
                full_load=False,
                counts="{}",
            )
        )
    return run_id


def _lease(ledger: Ledger, connector: str, run_id: str, holder: str, ttl: timedelta) -> None:
    now = ledger.clock()
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(connector_leases).values(
                connector=connector,
                token=1,
                run_id=run_id,
                holder=holder,
                acquired_at=now,
                expires_at=now + ttl,
            )
        )


def _status_of(ledger: Ledger, run_id: str) -> tuple[str, str | None]:
    with ledger.engine.connect() as conn:
        row = conn.execute(
            select(sync_runs.c.status, sync_runs.c.error).where(sync_runs.c.id == run_id)
        ).one()
    return row.status, row.error


def test_a_run_whose_process_died_is_found_and_recorded_as_crashed(ledger: Ledger) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = _running_row(ledger, "dead")
    _lease(ledger, "dead", dead, f"{host}:{gone.pid}", timedelta(minutes=5))
    alive = _running_row(ledger, "alive")
    _lease(ledger, "alive", alive, this_process(), timedelta(minutes=5))
    hung = _running_row(ledger, "hung")
    _lease(ledger, "hung", hung, "another-host:4242", timedelta(minutes=1))
    ledger.clock.advance(minutes=2)  # type: ignore[attr-defined]
    assert settle_crashed(ledger.engine, ledger.clock()) == sorted([dead, hung])
    assert _status_of(ledger, dead) == ("crashed", "crashed: its process died before the run ended")
    assert _status_of(ledger, hung)[0] == "crashed"
    assert _status_of(ledger, alive) == ("running", None)  # its process is this one: still running
    assert settle_crashed(ledger.engine, ledger.clock()) == []


def test_a_skipped_run_leaves_a_row_and_readiness_passes_over_it(
    ledger: Ledger, config_path: Path, tmp_path: Path
) -> None:
    from consentsync.app import open_sync
    from consentsync.sync.locks import RunInProgress

    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": "busy",
            "vendor": "salesforce",
            "mappings": [MAPPING],
            "settings": {"login_url": "https://127.0.0.1:9", "client_id": "x", "client_secret": "y"},
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    engine = open_sync(load_config(config_path), "busy", ledger)
    try:
        with connector_lock(ledger.engine, "busy"), pytest.raises(RunInProgress):
            engine.run()  # another process (here: this one) is running the connector
    finally:
        engine.connector.close()
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(sync_runs.c.status, sync_runs.c.error).where(sync_runs.c.connector == "busy")
        ).all()
    if ledger.engine.dialect.name == "sqlite":  # PostgreSQL's advisory lock is reentrant per session
        assert len(rows) == 1 and rows[0].status == "skipped"
        assert rows[0].error.startswith("skipped: another process is running connector 'busy'")
    # A skipped run is no verdict: two failures around it are two in a row.
    assert failure_streak(["failed", "skipped", "crashed", "running", "succeeded", "failed"]) == 2
    assert failure_streak(["succeeded", "failed"]) == 0
    for status in ("failed", "skipped", "crashed"):
        with ledger.engine.begin() as conn:
            ledger.clock.advance(seconds=1)  # type: ignore[attr-defined]
            conn.execute(
                insert(sync_runs).values(
                    id=str(uuid.uuid4()),
                    connector="flaky",
                    started_at=ledger.clock(),
                    status=status,
                    full_load=False,
                    counts="{}",
                )
            )
    assert failing_connectors(ledger.engine, threshold=2) == ["flaky"]
    assert failing_connectors(ledger.engine, threshold=3) == []


def test_heartbeat_says_whether_a_daemon_runs(ledger: Ledger) -> None:
    beats: list[int] = []
    heartbeat = Heartbeat(
        ledger.engine, ledger.clock, interval=timedelta(seconds=60), on_beat=lambda: beats.append(1)
    )
    heartbeat.start()
    try:
        seen = running_daemons(ledger.engine, ledger.clock())
        assert [d.holder for d in seen] == [this_process()] and beats == [1]
        # Three beats missed (the process hangs, or died on another host): no daemon.
        assert running_daemons(ledger.engine, ledger.clock() + timedelta(minutes=4)) == []
    finally:
        heartbeat.stop()
    assert running_daemons(ledger.engine, ledger.clock()) == []  # a clean stop clears its row
