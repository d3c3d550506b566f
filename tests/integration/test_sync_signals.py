"""A one-off `consentsync sync` stopped by SIGTERM or SIGINT (Ctrl-C) behaves as the daemon does:
the page in hand is committed, the run is recorded as stopped, the command exits 75 within
seconds, and the next run finishes the work. Real processes, against the Salesforce sandbox."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import create_engine, select

from consentsync.ledger.engine import normalise_url
from consentsync.ledger.schema import crm_links, sync_cursors, sync_runs
from tests.conftest import Cli
from tests.integration.test_cli_sync import EXIT_STOPPED, _org_total, connect_sandbox


def _ledger_url(config_path: Path) -> str:
    url = yaml.safe_load(config_path.read_text())["ledger"]["url"]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{config_path.parent / url.removeprefix('sqlite:///')}"
    return normalise_url(url)


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """SQLite only: signals are the process's business, whatever the ledger (the page commit and
    the run row are checked on PostgreSQL by the engine's own tests)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_sync_commits_the_page_in_hand_and_exits_75(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    with SalesforceSandbox(faults={"delay": 0.3, "delay_kinds": ("query", "queryMore")}) as sandbox:
        sandbox.org.seed(250, seed=9)
        connect_sandbox(sandbox, config_path, monkeypatch)
        # Pages of 200 records, each answered after 0.3 s: the run is mid-read for seconds.
        data = yaml.safe_load(config_path.read_text())
        data["connectors"][0]["batch_size"] = 200
        data["connectors"][0]["settings"]["query_batch_size"] = 200
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        command = [str(Path(sys.executable).parent / "consentsync"), "--config", str(config_path)]
        process = subprocess.Popen(
            [*command, "sync", "sf", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        ledger = create_engine(_ledger_url(config_path))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the first page is committed
            with ledger.connect() as conn:
                # an object's cursor (the "~" rows are the run's own: its rules, the ledger feed)
                mapped = sync_cursors.c.object_type.not_like("~%")
                if conn.execute(select(sync_cursors.c.object_type).where(mapped)).first():
                    break
            time.sleep(0.05)
        else:
            process.kill()
            pytest.fail("no page was committed")
        sent = time.monotonic()
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
        assert process.returncode == EXIT_STOPPED, err[-600:]
        assert time.monotonic() - sent < 10
        report = json.loads(out)
        assert report["status"] == "stopped" and "shutdown requested" in report["error"]
        assert 0 < report["counts"]["read"] < _org_total(sandbox)
        with ledger.connect() as conn:
            runs = conn.execute(select(sync_runs.c.status)).scalars().all()
            linked = conn.execute(select(crm_links.c.id)).all()
        assert runs == ["stopped"]
        assert linked, "the pages read before the signal were not committed"
        ledger.dispose()
        # The next run finishes the work.
        finished = subprocess.run(
            [*command, "sync", "sf", "--json"], capture_output=True, text=True, timeout=120
        )
        assert finished.returncode == 0, finished.stderr[-600:]
        assert json.loads(finished.stdout)["status"] == "succeeded"
