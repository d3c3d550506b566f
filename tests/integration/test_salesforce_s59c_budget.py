"""Black-box finding F6 (bb59b): a Salesforce ``budget.per_run`` between a run without describes
(9 calls with the four shipped mappings) and the hour's first run (13) stopped every
``consentsync sync`` before its writes for good, each run a process of its own (describe answers
were kept in the process only), and each run spent more calls than its budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce import connector as sf_connector
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import func, select

from consentsync.ledger.schema import outbox
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import seeded_org, shipped_engine

ALL_OBJECTS = ["contact.yaml", "lead.yaml", "individual.yaml", "contact_point_type_consent.yaml"]


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(30, seed=59)


def _engine(ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, **settings: Any) -> SyncEngine:
    options = SyncOptions(batch_size=25, signpost_lag_seconds=0)
    settings = {"query_batch_size": 200, **settings}
    return shipped_engine(ledger, config_path, salesforce, "sf", "salesforce", ALL_OBJECTS, settings, options)


def _pending(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
        ).scalar_one()


def _new_process() -> None:
    """What a new ``consentsync sync`` process starts with: no describe answer in memory."""
    with sf_connector._DESCRIBED_LOCK:
        sf_connector._DESCRIBED.clear()


@SQLITE_ONLY
@pytest.mark.parametrize("per_run", [9, 10, 11, 12])
def test_a_run_never_spends_more_than_its_budget(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, per_run: int
) -> None:
    for _ in range(3):
        _new_process()
        before = sum(salesforce.calls.values())
        engine = _engine(ledger, config_path, salesforce, budget={"per_run": per_run})
        engine.run()
        spent = sum(salesforce.calls.values()) - before
        assert engine.connector.usage.calls <= per_run, engine.connector.usage.per_endpoint
        assert spent <= per_run, (spent, dict(salesforce.calls))


@SQLITE_ONLY
def test_runs_each_in_a_process_of_its_own_get_through_a_budget_below_the_hours_first_run(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """Budget 11 (9 a run without describes, 13 with them): the describes of the first run are
    kept in the connector's state directory for the next processes, whose runs get through."""
    statuses = []
    for _ in range(4):
        _new_process()
        engine = _engine(ledger, config_path, salesforce, budget={"per_run": 11})
        statuses.append(engine.run().status)
    assert statuses[0] == "stopped" and "succeeded" in statuses, statuses
    assert _pending(ledger) == 0, statuses
