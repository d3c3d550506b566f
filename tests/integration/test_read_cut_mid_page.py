"""A read the connector stops in the middle of a page (the run's call budget spent, a limit, a
failure): what it handed over before the stop is committed, with its position, and the next run
goes on from there. A connector making a call a record (SuperOffice reads each person whole)
under a budget smaller than a page's calls had nothing committed, ever: every run read the same
records again. SQLite and PostgreSQL, against a scripted CRM.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from consentsync.ledger.schema import crm_links
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sdk import Action, BudgetExhausted, CrmRecord, Cursor, ErrorRule, Fault
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import MAPPING, Org

SPENT = ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "run budget spent")


class MeteredOrg(Org):
    """The scripted org whose reads cost a call a record, under ``budget`` calls a run; every
    read hands over the records after ``since`` in cursor order. No look-back window: the
    records are stamped well before the runs."""

    lookback = timedelta(0)

    def __init__(self, clock: Clock, budget: int) -> None:
        super().__init__(clock)
        self.budget = budget
        self.handed: list[str] = []

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        spent = 0
        for record in super().read_changes(object_type, fields, since, until):
            if since.modstamp is not None and (record.modstamp, record.record_id) <= (
                since.modstamp,
                since.record_id or "",
            ):
                continue
            if spent == self.budget:
                raise BudgetExhausted(f"{self.budget} calls a run", SPENT)
            spent += 1
            self.handed.append(record.record_id)
            yield record


def _linked(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as conn:
        return set(conn.execute(select(crm_links.c.record_id)).scalars())


def test_a_read_stopped_inside_a_page_keeps_what_it_handed_over_and_goes_on(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = MeteredOrg(clock, budget=4)
    for n in range(10):
        org.put(f"r{n:02d}", f"person.{n}@example.com")
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    statuses = []
    for _ in range(4):
        clock.advance(minutes=1)
        engine = SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0, batch_size=1000))
        statuses.append(engine.run().status)
    assert _linked(ledger) == {f"r{n:02d}" for n in range(10)}, "a read cut inside its page kept nothing"
    assert statuses[:2] == ["stopped", "stopped"], statuses  # the budget is still reported
    assert statuses[-1] == "succeeded"
    assert len(org.handed) == 10, f"records read twice: {org.handed}"
