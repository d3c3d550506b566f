"""`consentsync sync --all`, `apply` and `plan` stopped by SIGTERM (cron's or systemd's timeout, a
deploy) behave as `sync CONNECTOR` and the daemon do: the page or push batch in hand is committed,
the run is recorded as stopped (never found later as crashed), the command exits 75 within
seconds, and nothing after it is started. Real processes, against the Salesforce sandbox."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import Engine, create_engine, func, select

from consentsync.ledger.engine import normalise_url
from consentsync.ledger.schema import outbox, sync_cursors, sync_runs
from tests.conftest import Cli
from tests.integration.test_cli_sync import EXIT_STOPPED, connect_sandbox

COMMAND = [str(Path(sys.executable).parent / "consentsync")]


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """SQLite only: signals are the process's business, whatever the ledger."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _ledger(config_path: Path) -> Engine:
    url = yaml.safe_load(config_path.read_text())["ledger"]["url"]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{config_path.parent / url.removeprefix('sqlite:///')}"
    return create_engine(normalise_url(url))


def _edit(config_path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(config_path.read_text())
    change(data)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _signal_when(
    process: subprocess.Popen[str], ledger: Engine, ready: Callable[[Any], bool], what: str
) -> float:
    """Sends SIGTERM to ``process`` once ``ready(conn)`` holds; the time it was sent."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with ledger.connect() as conn:
            if ready(conn):
                break
        if process.poll() is not None:
            pytest.fail(f"the command ended before {what}: {process.communicate()[1][-600:]}")
        time.sleep(0.05)
    else:
        process.kill()
        pytest.fail(f"never saw {what}")
    process.send_signal(signal.SIGTERM)
    return time.monotonic()


def test_sync_all_stopped_by_sigterm_stops_the_run_in_hand_and_starts_no_other(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox(faults={"delay": 0.3, "delay_kinds": ("query", "queryMore")}) as sandbox:
        sandbox.org.seed(250, seed=9)
        connect_sandbox(sandbox, config_path, monkeypatch)

        def two_connectors(data: dict[str, Any]) -> None:
            # Pages of 200 records, each answered after 0.3 s: the first run is mid-read for
            # seconds. A second connector after it (the same org, observing) must not start.
            first = data["connectors"][0]
            first["batch_size"] = 200
            first["settings"]["query_batch_size"] = 200
            data["connectors"].append({**first, "name": "sf2", "mode": "observe"})

        _edit(config_path, two_connectors)
        process = subprocess.Popen(
            [*COMMAND, "--config", str(config_path), "sync", "--all", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ledger = _ledger(config_path)
        sent = _signal_when(
            process,
            ledger,
            lambda conn: conn.execute(select(sync_cursors.c.object_type)).first() is not None,
            "a page committed",
        )
        out, err = process.communicate(timeout=60)
        assert process.returncode == EXIT_STOPPED, (process.returncode, err[-600:])
        assert time.monotonic() - sent < 10
        outcomes = {row["connector"]: row for row in json.loads(out)}
        assert outcomes["sf"]["status"] == "stopped" and outcomes["sf"]["exit_code"] == EXIT_STOPPED
        assert outcomes["sf2"]["status"] == "stopped" and "not started" in outcomes["sf2"]["error"]
        with ledger.connect() as conn:
            runs = conn.execute(select(sync_runs.c.connector, sync_runs.c.status)).all()
        ledger.dispose()
        # The run in hand is on record as stopped (not left running, to be found crashed), and
        # the connector after it never ran.
        assert [tuple(run) for run in runs] == [("sf", "stopped")]


def test_apply_stopped_by_sigterm_keeps_what_was_pushed_and_says_to_apply_again(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox(faults={"delay": 0.4, "delay_kinds": ("composite",)}) as sandbox:
        sandbox.org.seed(150, seed=9)
        connect_sandbox(sandbox, config_path, monkeypatch)
        # Opt-out boxes ticked for everyone without consent on record (a reversible write on
        # Salesforce, adoption.md): a plan of many pushes, sent 5 a call, each call answered
        # after 0.4 s, so the apply is mid-push for seconds.
        contact = config_path.parent / "mappings/contact.yaml"
        text = contact.read_text()
        assert "push: {suppressed: true, allowed: false}" in text
        contact.write_text(
            text.replace(
                "push: {suppressed: true, allowed: false}",
                "push: {suppressed: true, allowed: false, no_consent: true}",
                1,
            )
        )

        def observing(data: dict[str, Any]) -> None:
            data["connectors"][0].update(mode="observe", push_batch_size=5, push_concurrency=1)

        _edit(config_path, observing)
        cli.ok("sync", "sf")
        plan_file = config_path.parent / "plan.json"
        cli.ok("plan", "sf", "-o", str(plan_file))
        planned = json.loads(plan_file.read_text())["records"]
        assert planned >= 30
        command = [*COMMAND, "--config", str(config_path), "apply", str(plan_file), "--actor", "Jo Admin"]
        process = subprocess.Popen(
            [*command, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        ledger = _ledger(config_path)

        def pushed(conn: Any) -> int:
            done = select(func.count()).select_from(outbox).where(outbox.c.status == "done")
            return int(conn.execute(done).scalar_one())

        sent = _signal_when(process, ledger, lambda conn: pushed(conn) > 0, "a push acknowledged")
        out, err = process.communicate(timeout=60)
        assert process.returncode == EXIT_STOPPED, (process.returncode, err[-600:])
        assert time.monotonic() - sent < 10
        report = json.loads(out)
        assert report["status"] == "stopped"
        assert "apply the same plan again" in report["note"]
        with ledger.connect() as conn:
            by_start = select(sync_runs.c.status).order_by(sync_runs.c.started_at)
            statuses = conn.execute(by_start).scalars().all()
            done_now = pushed(conn)
        assert statuses[-1] == "stopped"
        assert 0 < done_now < planned
        # Applying the same plan again pushes the rest, and only the rest (the CRM answering at
        # once now: what is checked is what is pushed, not how long it takes).
        sandbox.faults.update(delay=0.0)
        again = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr[-600:]
        assert json.loads(again.stdout)["counts"]["pushed"] == planned - done_now
        with ledger.connect() as conn:
            assert pushed(conn) == planned
        ledger.dispose()


def test_plan_stopped_by_sigterm_exits_75_and_changes_nothing(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox(faults={"delay": 0.3, "delay_kinds": ("query", "queryMore")}) as sandbox:
        sandbox.org.seed(1000, seed=9)
        connect_sandbox(sandbox, config_path, monkeypatch)

        def paged(data: dict[str, Any]) -> None:
            data["connectors"][0]["settings"]["query_batch_size"] = 200

        _edit(config_path, paged)
        plan_file = config_path.parent / "plan.json"
        process = subprocess.Popen(
            [*COMMAND, "--config", str(config_path), "plan", "sf", "-o", str(plan_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while sandbox.calls_of(("query", "queryMore")) < 1:  # reading the org, page after page
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-600:]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
        assert process.returncode == EXIT_STOPPED, (process.returncode, err[-600:])
        assert err.strip().startswith("SIGTERM: stopping") or "no plan" in err
        assert "Traceback" not in err
        assert not plan_file.exists()
        ledger = _ledger(config_path)
        with ledger.connect() as conn:
            assert conn.execute(select(sync_runs.c.status)).scalars().all() in ([], ["stopped"])
            assert conn.execute(select(sync_cursors.c.object_type)).first() is None
        ledger.dispose()
