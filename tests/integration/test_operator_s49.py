"""What an operator running consentsync in production ran into (S49), each with real processes
where it is about processes: a failed run's reason said once on stderr, not three times; `audit
verify` and `doctor` exit with codes of their own; `init` with a PostgreSQL URL and no psycopg
fails cleanly, writing nothing; `status` before the first run says the API budget is not known
yet; docs/first-hour.sh takes the ports it is given (by default free ones); a run killed mid-run
and later found crashed is counted in consentsync_runs_total; two daemons on one ledger make one
run of a connector per interval between them; a connector is not overdue after a long run."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import insert, select, text

from consentsync import exit_codes
from consentsync.config import load_config
from consentsync.demo import find_mappings
from consentsync.ledger.schema import audit_entries, sync_runs
from consentsync.ledger.service import Ledger
from consentsync.sync.heartbeat import Heartbeat
from consentsync.sync.status import connector_status
from tests.conftest import TEST_ERASURE_KEY, Cli, own_environment, proof, stop
from tests.integration.crash_config import CONNECTOR, write_config
from tests.integration.helpers import add_absent_salesforce, free_port, local_session, scrape_until

ROOT = Path(__file__).resolve().parents[2]
CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
SQLITE_ONLY = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
WRONG = "wrong-secret-s49-0123456789"


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(port=free_port()) as sandbox:
        sandbox.org.seed(8, seed=3)
        yield sandbox


def _environment(
    tmp_path: Path, org: SalesforceSandbox, secret: str | None = None, **more: str
) -> dict[str, str]:
    env = own_environment(tmp_path, TEST_ERASURE_KEY)
    env["CRASHTEST_SF_SECRET"] = secret or org.credentials.client_secret
    env.update(more)
    return env


def _configured(tmp_path: Path, org: SalesforceSandbox, ledger_url: str, **connector: Any) -> Path:
    """tests/integration/crash_config.py's config (connector ``sf``), its ledger made by `init`."""
    path = write_config(tmp_path, org, find_mappings(), ledger_url)
    data = yaml.safe_load(path.read_text())
    data["connectors"][0].update(connector)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    made = subprocess.run(
        [CONSENTSYNC, "--config", str(path), "init"],
        env=_environment(tmp_path, org),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    return path


def _consentsync(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # stdout and stderr are pipes: not a terminal, as under systemd or cron.
    return subprocess.run(
        [CONSENTSYNC, "--config", str(config), *args], env=env, capture_output=True, text=True, timeout=120
    )


# -- 1. a failed run's reason, once on stderr ----------------------------------------------------


@SQLITE_ONLY
def test_a_failed_run_says_why_once_on_stderr_off_a_terminal(
    tmp_path: Path, org: SalesforceSandbox, ledger_url: str
) -> None:
    config = _configured(tmp_path, org, ledger_url)
    env = _environment(tmp_path, org, WRONG)
    reason = "invalid_client: invalid client credentials"
    for args in (("sync", CONNECTOR), ("sync", "--all"), ("plan", CONNECTOR)):
        done = _consentsync(config, env, *args)
        assert done.returncode == exit_codes.CREDENTIALS, done.stderr
        # One line on stderr, the one a script reads; the report on stdout says it in its place.
        assert done.stderr.count(reason) == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("consentsync: error: "), done.stderr
        assert "sync.interrupted" not in done.stderr
        assert WRONG not in done.stdout + done.stderr
    synced = _consentsync(config, env, "sync", CONNECTOR)
    assert synced.stdout.count(reason) == 1, synced.stdout
    # Whoever asks for log lines gets them all: the log line is there too.
    logged = _consentsync(config, env, "--log-format", "json", "sync", CONNECTOR)
    assert logged.returncode == exit_codes.CREDENTIALS
    assert '"event": "sync.interrupted"' in logged.stderr
    assert "consentsync: error: credentials:" in logged.stderr
    # A run that fails on something else (a stale plan, a ledger refusal) is said once the same way;
    # a run stopped cleanly (exit 75) prints no error line, so its log line stays (not tested here).


# -- 2. audit verify and doctor: codes of their own ----------------------------------------------


def _broken_chain(cli: Cli, ledger: Ledger) -> None:
    cli.ok("ledger", "record", "--email", "a@example.com", "--purpose", "email_marketing",
           "--status", "granted", "--source", "web_form", *proof())  # fmt: skip
    with ledger.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_entries_no_update"))
        last = conn.execute(select(audit_entries.c.seq).order_by(audit_entries.c.seq.desc())).scalar()
        conn.execute(audit_entries.update().where(audit_entries.c.seq == last).values(action="edited"))


def test_audit_verify_and_doctor_exit_with_codes_of_their_own(cli: Cli, ledger: Ledger) -> None:
    assert exit_codes.AUDIT_BROKEN not in (exit_codes.FAILED, exit_codes.CONFIG)
    assert exit_codes.UNPROTECTED not in (exit_codes.FAILED, exit_codes.CONFIG, exit_codes.AUDIT_BROKEN)
    assert cli("audit", "verify").exit_code == 0
    assert cli("doctor").exit_code == 0  # warnings (SQLite, checkpoints off) only
    _broken_chain(cli, ledger)
    verified = cli("audit", "verify")
    assert verified.exit_code == exit_codes.AUDIT_BROKEN, verified.output
    assert "DISAGREE: consent event 1 has no audit entry saying the same" in verified.stdout
    assert cli("audit", "verify", "--json").exit_code == exit_codes.AUDIT_BROKEN
    doctor = cli("doctor")
    assert doctor.exit_code == exit_codes.UNPROTECTED, doctor.output
    assert "ERROR    triggers missing: audit_entries_no_update" in doctor.stdout or (
        "is disabled" in doctor.stdout
    )
    # Both documented where the table of exit codes is.
    assert "| 5 | AUDIT_BROKEN |" in exit_codes.__doc__ and "| 6 | UNPROTECTED |" in exit_codes.__doc__


def test_doctor_with_misconfigured_checkpoints_exits_2(
    cli: Cli, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = yaml.safe_load(cli.config_path.read_text())
    data["audit"] = {"checkpoints": {"directory": "checkpoints"}}  # and no signing key
    cli.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.delenv("CONSENTSYNC_CHECKPOINT_KEY", raising=False)
    doctor = cli("doctor")
    assert doctor.exit_code == exit_codes.CONFIG, doctor.output
    assert "ERROR    checkpoints:" in doctor.stdout
    assert json.loads(cli("doctor", "--json").stdout)[-1]["level"] == "error"


# -- 3. init with a PostgreSQL URL and no psycopg ------------------------------------------------


def test_init_with_a_postgresql_url_without_psycopg_writes_nothing_and_names_the_extra(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "no-psycopg"
    (blocker / "psycopg").mkdir(parents=True)
    (blocker / "psycopg" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    )
    folder = tmp_path / "empty"
    folder.mkdir()
    env = own_environment(tmp_path, TEST_ERASURE_KEY)
    env.pop("CONSENTSYNC_CONFIG")
    env["PYTHONPATH"] = str(blocker)
    url = "postgresql://consentsync@127.0.0.1:23999/ledger"
    made = subprocess.run(
        [CONSENTSYNC, "init", "--ledger-url", url],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == exit_codes.CONFIG, made.stderr
    lines = made.stderr.splitlines()
    assert len(lines) == 1, made.stderr
    assert lines[0].startswith("consentsync: error: --ledger-url: a PostgreSQL ledger needs its driver")
    assert "pip install 'consentsync[postgres]'" in lines[0]
    assert "consentsync.yaml" not in lines[0]  # it names no file it did not write
    assert list(folder.iterdir()) == []

    # --force over an existing config: the config stays as it was.
    (folder / "consentsync.yaml").write_text("ledger:\n  url: sqlite:///kept.db\n")
    forced = subprocess.run(
        [CONSENTSYNC, "init", "--ledger-url", url, "--force"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forced.returncode == exit_codes.CONFIG and "--ledger-url:" in forced.stderr
    assert (folder / "consentsync.yaml").read_text() == "ledger:\n  url: sqlite:///kept.db\n"
    assert sorted(p.name for p in folder.iterdir()) == ["consentsync.yaml"]


# -- 4. status before the first run -----------------------------------------------------------


def _with_connector(config_path: Path) -> None:
    add_absent_salesforce(config_path, "${S49_SECRET}", schedule={"interval_seconds": 60})


def _run_row(
    ledger: Ledger, *, started: datetime, finished: datetime | None, status: str, **counts: Any
) -> str:
    run_id = str(uuid.uuid4())
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(
                id=run_id,
                connector="sf",
                started_at=started,
                finished_at=finished,
                status=status,
                full_load=False,
                counts=json.dumps(counts),
                error=None,
            )
        )
    return run_id


def test_status_before_the_first_run_says_the_budget_is_not_known_yet(cli: Cli, ledger: Ledger) -> None:
    _with_connector(cli.config_path)
    config = load_config(cli.config_path)

    def budget() -> tuple[str, str]:
        (row,) = connector_status(config, ledger.engine, late_after=timedelta(hours=48))
        shown = [line for line in cli.ok("status").stdout.splitlines() if "API budget" in line]
        return row["api_budget_status"], shown[0].strip()

    assert budget() == ("no_run_yet", "API budget not known yet: no run has reached this CRM")
    now = datetime.now(UTC)
    # A run that failed before its first call (a missing secret) did not reach the CRM either.
    _run_row(ledger, started=now - timedelta(minutes=9), finished=now, status="failed", api_calls=0)
    assert budget()[0] == "no_run_yet"
    _run_row(ledger, started=now - timedelta(minutes=8), finished=now, status="succeeded", api_calls=3)
    assert budget() == ("not_reported", "API budget not reported by this CRM")
    _run_row(ledger, started=now - timedelta(minutes=7), finished=now, status="succeeded",
             api_calls=3, api_used=40, api_limit=100)  # fmt: skip
    status, line = budget()
    assert status == "reported" and line.startswith("API budget 60 of 100 calls left")


# -- 8. not overdue after a long run ----------------------------------------------------------


def test_a_connector_is_not_overdue_after_a_run_longer_than_its_interval(cli: Cli, ledger: Ledger) -> None:
    """A run of 150 s on a 60 s interval: the daemon skipped the times its schedule came round
    meanwhile, so its next run is the first time after the run ended, never one in the past."""
    _with_connector(cli.config_path)
    config = load_config(cli.config_path)
    now = datetime.now(UTC)
    started = now - timedelta(seconds=160)
    ended = started + timedelta(seconds=150)  # 10 s ago
    _run_row(ledger, started=started, finished=ended, status="succeeded", api_calls=1)
    heartbeat = Heartbeat(ledger.engine, lambda: datetime.now(UTC))
    heartbeat.beat()  # a daemon runs: next runs are shown
    try:
        (row,) = connector_status(config, ledger.engine, late_after=timedelta(hours=48))
        upcoming = datetime.fromisoformat(row["next_run"].replace("Z", "+00:00"))
        assert upcoming > ended and upcoming > now, row["next_run"]
        assert upcoming == started + timedelta(seconds=180)
        from consentsync.web.console import OVERDUE_MARGIN  # the console's own margin

        assert upcoming + OVERDUE_MARGIN > now
        shown = cli.ok("status").stdout
        assert f"next run   {row['next_run']}" in shown
    finally:
        heartbeat.stop()


# -- 5. docs/first-hour.sh on the ports it is given --------------------------------------------


def test_first_hour_script_names_no_fixed_port_and_runs_on_the_ports_given(tmp_path: Path) -> None:
    script = (ROOT / "docs/first-hour.sh").read_text()
    # No port written into the script: each is a variable, 0 (a free one) unless set.
    assert not re.search(r"--(metrics-)?port \d", script), "a fixed port in docs/first-hour.sh"
    assert not re.search(r"127\.0\.0\.1:\d", script)
    sandbox_port, metrics_port = free_port(), free_port()
    while metrics_port == sandbox_port:
        metrics_port = free_port()
    env = own_environment(tmp_path, TEST_ERASURE_KEY)
    env.pop("CONSENTSYNC_CONFIG")
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        SANDBOX_PORT=str(sandbox_port),
        METRICS_PORT=str(metrics_port),
    )
    folder = tmp_path / "hour"
    folder.mkdir()
    done = subprocess.run(
        ["bash", str(ROOT / "docs/first-hour.sh")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    transcript = done.stdout
    assert done.returncode == 0, transcript[-3000:] + done.stderr[-2000:]
    assert f"consentsync sandbox salesforce --port {sandbox_port} --seed 60" in transcript
    assert f"(serving at http://127.0.0.1:{metrics_port})" in transcript
    assert "GET /healthz -> 200 ok" in transcript
    assert "consentsync_runs_total{" in transcript
    assert "[daemon exit 0]" in transcript
    # Each command is printed as it can be pasted back: an argument with a space stays one.
    applied = [line for line in transcript.splitlines() if line.startswith("$ ") and " apply " in line]
    assert applied and all("Ops Admin" in shlex.split(line[2:]) for line in applied), applied


# -- 6. a crashed run is counted in consentsync_runs_total -----------------------------------


def _metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("}")[0][len(name) + 1 :] == wanted:
            return float(line.rsplit(" ", 1)[1])
    return None


@SQLITE_ONLY
def test_a_run_killed_mid_run_and_found_crashed_is_counted_in_runs_total(
    tmp_path: Path, org: SalesforceSandbox, ledger_url: str
) -> None:
    config = _configured(tmp_path, org, ledger_url, schedule={"interval_seconds": 3600})
    env = _environment(tmp_path, org)
    # `consentsync sync` killed (SIGKILL) mid-run, after reading its first page: its row stays
    # "running", its lease held by a process that is gone.
    killed = _consentsync(
        config, {**env, "CONSENTSYNC_FAILPOINTS": "sync.page.read=kill@1"}, "sync", CONNECTOR
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    port = free_port()
    daemon = subprocess.Popen(
        [CONSENTSYNC, "--config", str(config), "run", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = scrape_until(
            local_session(),
            port,
            lambda text: (
                _metric(text, "consentsync_runs_total", connector=CONNECTOR, status="succeeded") == 1
            ),
        )
        assert _metric(metrics, "consentsync_runs_total", connector=CONNECTOR, status="crashed") == 1.0, (
            metrics
        )
        assert _metric(metrics, "consentsync_last_run_status", connector=CONNECTOR, status="succeeded") == 1.0
    finally:
        stop(daemon)
    out, _err = daemon.communicate()
    assert "sync.crashed_run_found" in out
    ledger_runs = _statuses(config)
    assert sorted(ledger_runs) == ["crashed", "succeeded"], ledger_runs


def _statuses(config: Path) -> list[str]:
    from consentsync.app import open_ledger

    opened = open_ledger(load_config(config))
    try:
        with opened.engine.connect() as conn:
            return list(conn.execute(select(sync_runs.c.status).order_by(sync_runs.c.started_at)).scalars())
    finally:
        opened.engine.dispose()


# -- 7. two daemons on one ledger: one run per connector per interval -------------------------


def _starts(config: Path) -> list[datetime]:
    from consentsync.app import open_ledger

    opened = open_ledger(load_config(config))
    try:
        with opened.engine.connect() as conn:
            rows = conn.execute(
                select(sync_runs.c.started_at, sync_runs.c.status).order_by(sync_runs.c.started_at)
            ).all()
    finally:
        opened.engine.dispose()
    return [row.started_at for row in rows if row.status != "skipped"]


# On the production ledger only: the turn is taken with the same statements on SQLite, whose
# leases test_lease.py checks, and this test waits out three real intervals (30 s).
@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_two_daemons_on_one_ledger_run_a_connector_once_per_interval(
    tmp_path: Path, org: SalesforceSandbox, ledger_url: str
) -> None:
    interval = 10  # the shortest a schedule accepts
    config = _configured(tmp_path, org, ledger_url, schedule={"interval_seconds": interval})
    env = _environment(tmp_path, org)
    command = [CONSENTSYNC, "--config", str(config), "run", "--no-metrics"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second: subprocess.Popen[str] | None = None
    try:
        time.sleep(interval * 0.45)  # the second starts between two of the first's runs
        second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(interval * 2.6)
        assert first.poll() is None and second.poll() is None
    finally:
        stop(first)
        if second is not None:
            stop(second)
    _out1, err1 = first.communicate()
    out2, err2 = second.communicate() if second is not None else ("", "")
    starts = _starts(config)
    # About 3.05 intervals with a daemon running: 3 or 4 runs between them, never 6 or 7.
    assert 2 <= len(starts) <= 4, starts
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= interval * 0.85 for gap in gaps), gaps
    assert "sync.not_due" in out2, out2[-2000:] + err2[-2000:]
    assert "Traceback" not in err1 + err2


# -- a typo in a connector's vendor: said with its file, line and key ---------------------------


def test_a_vendor_typo_is_named_with_its_file_line_and_key_everywhere(cli: Cli, ledger: Ledger) -> None:
    from click.testing import CliRunner

    from consentsync.cli import main
    from consentsync.sync.daemon import Daemon
    from tests.conftest import one_line_error

    _with_connector(cli.config_path)
    data = cli.config_path.read_text().replace("vendor: salesforce", "vendor: salesfroce")
    cli.config_path.write_text(data)
    line = next(n for n, text in enumerate(data.splitlines(), start=1) if "vendor: salesfroce" in text)
    where = f"{cli.config_path}:{line}: connectors[0].vendor: no connector 'salesfroce' is installed"
    for args in (("sync", "sf"), ("plan", "sf"), ("discover", "sf"), ("status",)):
        result = CliRunner().invoke(main, ["--config", str(cli.config_path), *args])
        said = one_line_error(result, exit_codes.CONFIG, where, "installed are")
        assert "salesforce" in said.split("installed are", 1)[1]
    # The daemon records the run it could not start with the same words.
    config = load_config(cli.config_path)
    report = Daemon(config, ledger).run_connector("sf")
    assert report is not None and report.status == "failed"
    assert where in (report.error or ""), report.error


# -- the console and /metrics asked onto one port ----------------------------------------------


@SQLITE_ONLY
def test_run_with_the_console_on_the_metrics_port_is_a_one_line_refusal(
    tmp_path: Path, org: SalesforceSandbox, ledger_url: str
) -> None:
    config = _configured(tmp_path, org, ledger_url, schedule={"interval_seconds": 3600})
    port = str(free_port())
    refused = subprocess.run(
        [CONSENTSYNC, "--config", str(config), "run", "--metrics-port", port, "--web-port", port],
        env=_environment(tmp_path, org),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == exit_codes.CONFIG, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines() == [
        f"consentsync: error: --web-port {port} is the --metrics-port too: "
        "give each its own port (or 0 to pick a free one)"
    ]
    assert "Traceback" not in refused.stdout + refused.stderr
    assert _statuses(config) == []  # nothing ran


def test_the_console_socket_listens_as_soon_as_it_is_bound() -> None:
    """A second server of the same process (SO_REUSEADDR) cannot take the console's port."""
    from consentsync.web.server import bound_socket

    port = free_port()
    sock = bound_socket("127.0.0.1", port)
    try:
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
    finally:
        sock.close()
