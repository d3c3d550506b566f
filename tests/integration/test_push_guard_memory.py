"""The push guard counts the pushes waiting without loading them: a first sync of a large org
queues one push per record that needs it (622,833 at a million contacts), and loading them all
to count them took 240 MiB at once (docs/performance.md)."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import insert, select

from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import outbox, subjects
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import RunReport, SyncOptions
from tests.integration.test_ledger_query_plans import _requests
from tests.integration.test_sync_engine import _engine as sync_engine

WAITING = 60_000
MIB = 2**20


def test_the_push_guard_counts_a_large_queue_without_loading_it(ledger: Ledger, config_path: Path) -> None:
    ledger.record(Identity(email="person1@example.org"), next(_requests(ledger, 1, ledger.clock())).evidence)
    now = ledger.clock()
    with ledger.engine.begin() as conn:
        subject_id = conn.execute(select(subjects.c.id)).scalar_one()
        conn.execute(
            insert(outbox),
            [
                {"connector": "sf", "object_type": "Contact", "record_id": f"003{n:015d}",
                 "subject_id": subject_id, "fields": '{"HasOptedOutOfEmail": true}', "suppression": True,
                 "created_at": now, "status": "pending", "attempts": 0}
                for n in range(WAITING)
            ],
        )  # fmt: skip
    with SalesforceSandbox() as sandbox:
        options = SyncOptions(batch_size=37, signpost_lag_seconds=0, guard_max_records=WAITING - 1)
        engine = sync_engine(ledger, config_path, sandbox, options=options)
        report = RunReport("run", "sf", "running", datetime.now(UTC))
        held = engine._held(report)
    # Held (one record more than the guard allows): counted exactly, by the database ...
    assert held and report.status == "held"
    assert f"{WAITING} records to push" in (report.error or "")
    # ... but the held queue is loaded for the adoption report: what may not grow with the queue
    # is the count before it, measured on a queue that is not held.
    with SalesforceSandbox() as sandbox:
        options = SyncOptions(batch_size=37, signpost_lag_seconds=0, guard_max_records=WAITING)
        engine = sync_engine(ledger, config_path, sandbox, options=options)
        tracemalloc.start()
        try:
            held = engine._held(RunReport("run", "sf", "running", datetime.now(UTC)))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert not held
    assert peak < 2 * MIB, f"{peak / MIB:.1f} MiB to count {WAITING} waiting pushes"
