"""A stop (SIGTERM to `consentsync run`) that comes while a scheduled run is opening its connector
is not lost: the run is not begun. It used to find no engine to stop, and the run went on to its end
(a full sync of a large org, perhaps) while the stop waited for it, past any supervisor's grace
period. Against the Salesforce sandbox, through the daemon's own run_connector and stop()."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select

from consentsync.ledger.schema import sync_runs
from consentsync.ledger.service import Ledger, utcnow
from consentsync.sync import daemon as daemon_module
from consentsync.sync.daemon import Daemon
from tests.integration.test_daemon import _configure


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_a_stop_while_the_connector_opens_begins_no_run(
    ledger: Ledger, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox() as org:
        org.org.seed(60, seed=21)
        # Slow pages: a run that was begun would take many seconds.
        org.faults.update(delay=1.0, delay_kinds=("query", "queryMore"))
        config = _configure(config_path, {"sf": org}, interval=3600)
        ledger.clock = utcnow
        daemon = Daemon(config, ledger)
        daemon.start(run_now=False)  # the scheduler runs, this test makes the run itself
        opened = daemon_module.open_sync
        stopper: list[threading.Thread] = []

        def open_while_stopped(*args: Any) -> Any:
            engine = opened(*args)
            # SIGTERM arrives now: stop() runs to its end (no run to wait for yet) before the
            # connector is handed back.
            stopper.append(threading.Thread(target=daemon.stop))
            stopper[0].start()
            stopper[0].join(30)
            assert not stopper[0].is_alive()
            return engine

        monkeypatch.setattr(daemon_module, "open_sync", open_while_stopped)
        began = time.monotonic()
        report = daemon.run_connector("sf")
        took = time.monotonic() - began

        assert report is None
        assert took < 5, f"a run was made after the stop ({took:.1f} s)"
        assert org.calls_of(("query", "queryMore")) == 0
        with ledger.engine.connect() as conn:
            assert conn.execute(select(sync_runs.c.id)).first() is None
