"""No statement of a sync run reads more of the ledger as the ledger grows: each lookup's index
is selective for the rows it asks, UPDATEs and DELETEs included.

A plan that says SEARCH can still read every link of a connector (an index chosen on its first
column alone), and on a test-sized ledger nothing shows it. So the same incremental run (the
same few records changed in the CRM) is made against an org and a ledger of N and of 8N people,
and SQLite's virtual-machine steps per statement are counted (a progress handler on the
connection): a statement whose steps grow with the ledger reads rows it does not return."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import event

from consentsync.config import load_config
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.test_sync_engine import _engine as sync_engine

STEP = 50  # VM instructions per progress-handler call
SMALL, LARGE = 150, 1200  # contacts in the two orgs (8x)
CHANGED = 6


def _engine(ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox) -> SyncEngine:
    # A look-back window of zero: both runs read exactly the changed records.
    options = SyncOptions(batch_size=500, signpost_lag_seconds=0, lookback_seconds=0)
    return sync_engine(ledger, config_path, sandbox, options)


def _shape(sql: str) -> str:
    """The statement with its lists of placeholders folded: one shape however many keys."""
    return re.sub(r"\((?:\s*\?\s*,)+\s*\?\s*\)", "(?...)", " ".join(sql.split()))


class _StepCounter:
    """VM steps per statement shape on this engine's main connection, counted from a statement's
    start to the next one's (SQLite steps a SELECT as its rows are fetched)."""

    def __init__(self, ledger: Ledger) -> None:
        self.steps: dict[str, list[int]] = defaultdict(list)
        self._ticks = 0
        self._current: str | None = None
        self._raw: Any = None
        self.ledger = ledger

    def _tick(self) -> int:
        self._ticks += 1
        return 0

    def _close_current(self) -> None:
        if self._current is not None:
            self.steps[self._current].append(self._ticks)
        self._current, self._ticks = None, 0

    def before(self, conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        raw = conn.connection.dbapi_connection
        if raw is not self._raw:
            if self._raw is not None:
                self._raw.set_progress_handler(None, STEP)
            raw.set_progress_handler(self._tick, STEP)
            self._raw = raw
        self._close_current()
        if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
            self._current = _shape(sql)

    def __enter__(self) -> _StepCounter:
        event.listen(self.ledger.engine, "before_cursor_execute", self.before)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._close_current()
        event.remove(self.ledger.engine, "before_cursor_execute", self.before)
        if self._raw is not None:
            self._raw.set_progress_handler(None, STEP)


def _incremental_steps(ledger: Ledger, config_path: Path, contacts: int) -> dict[str, float]:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(contacts, seed=3)
        engine = _engine(ledger, config_path, sandbox)
        assert engine.run(full=True).status == "succeeded"
        assert engine.run().status == "succeeded"  # our own writes read back
        # The same kind of change in both orgs: opt-outs on contacts whose people have other
        # records to push to.
        subscribed = [r for r in sandbox.org.records("Contact") if not r.get("HasOptedOutOfEmail")]
        time.sleep(1.05)  # the CRM stamps whole seconds: the changes come after the last read's
        for record in subscribed[:CHANGED]:
            sandbox.org.update(record["Id"], HasOptedOutOfEmail=True)
        # And people who took a new address: their records read again with it, so that the run
        # weighs which addresses they left (the lookups of their addresses and of the records
        # still showing the old ones).
        for n, record in enumerate(subscribed[CHANGED : 2 * CHANGED]):
            sandbox.org.update(record["Id"], Email=f"moved.{n}@example.net")
        with _StepCounter(ledger) as counter:
            report = engine.run()
        assert report.status == "succeeded", report.error
        assert report.counts.evidence_recorded >= CHANGED
    left = [shape for shape in counter.steps if shape.startswith("UPDATE subject_identifiers SET left_at")]
    assert left, "no address was found left: the run did not weigh the moves"
    return {shape: max(runs) for shape, runs in counter.steps.items()}


def test_no_statement_of_an_incremental_run_reads_more_as_the_ledger_grows(
    tmp_path: Path, clock: Any
) -> None:
    """On SQLite, whose virtual-machine steps count the rows a statement reads (PostgreSQL's
    plans are checked by test_ledger_query_plans)."""
    from consentsync.app import open_ledger
    from consentsync.config import write_starter

    measured = []
    for size in (SMALL, LARGE):
        directory = tmp_path / str(size)
        directory.mkdir()
        config_path = directory / "consentsync.yaml"
        write_starter(config_path, f"sqlite:///{directory / 'ledger.db'}")
        ledger = open_ledger(load_config(config_path), migrate=True)
        measured.append(_incremental_steps(ledger, config_path, size))
        ledger.engine.dispose()
    small, large = measured
    grown = {
        shape: (small[shape], large[shape])
        for shape in small.keys() & large.keys()
        # A statement of a few steps in both is no finding; one that read 8x the rows is.
        if large[shape] > 40 and large[shape] > 3 * max(small[shape], 1)
    }
    assert grown == {}, "\n".join(f"{a} -> {b} steps: {shape[:200]}" for shape, (a, b) in grown.items())
