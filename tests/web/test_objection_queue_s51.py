"""The objection queue (session 51).

- ``Console.objections()`` and ``objection()`` read every objection ever raised for each page
  view (the whole table, sorted by an expression no index serves) to show 25 of them, or one.
  They now read a page in SQL through the (status, raised_at) index, pending first and oldest
  first as before, with the same counts.
- ``GET /api/objections`` carried every objector's full address while the page masked them: the
  list is masked for both now; the address is on the objection's own endpoint, whose read is
  audited like the page's.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event, select

from consentsync.config import load_config
from consentsync.ledger.schema import audit_entries
from consentsync.ledger.service import Ledger
from consentsync.sync.plan import mask_email
from consentsync.web.console import Console
from tests.conftest import SQLITE_ONLY, Clock
from tests.integration.test_ledger_query_plans import _capture, _whole_table_reads
from tests.web.conftest import World, api_login


def _raise_queue(ledger: Ledger, clock: Clock, people: int) -> None:
    """Objections raised at interleaved times, a third upheld and a third rejected: the queue's
    pending part and its decided part each mix statuses and times."""
    start = clock.now
    for person in range(people):
        # Out of raising order (7 is prime to people), so that id order is not time order.
        raised_at = start - timedelta(hours=(person * 7) % people)
        found = ledger.raise_objection(f"person{person}@example.org", "profiling", raised_at=raised_at)
        if person % 3 == 1:
            ledger.decide_objection(found["id"], uphold=True, by="rex", reason="upheld")
        elif person % 3 == 2:
            ledger.decide_objection(found["id"], uphold=False, by="rex", reason="compelling grounds")


def test_the_queue_is_read_a_page_at_a_time_in_its_order_with_its_counts(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    _raise_queue(ledger, clock, 23)
    console = Console(load_config(config_path), ledger)
    for pending_only in (True, False):
        expected = [o["id"] for o in ledger.list_objections(pending_only=pending_only)]
        shown: list[int] = []
        for page in range(1, 6):
            found = console.objections(pending_only=pending_only, page=page, per_page=5)
            assert found.total == len(expected)
            shown += [item["id"] for item in found.items]
        assert shown == expected  # pending first, oldest first, none lost or shown twice
    assert console.count_objections(pending_only=True) == len(ledger.list_objections(pending_only=True))
    assert console.count_objections(pending_only=False) == 23
    beyond = console.objections(pending_only=False, page=9, per_page=5)
    assert beyond.items == [] and beyond.total == 23

    statements = _capture(ledger)
    try:
        second = console.objections(pending_only=False, page=2, per_page=5)
        one = console.objection(second.items[0]["id"], reader=None)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)
    assert one["objection"]["id"] == second.items[0]["id"] and one["subject"] is not None
    from_objections = [sql for sql, _ in statements if "FROM objections" in sql]
    assert from_objections, "no read of the objections was captured"
    # Every read of the rows stops at a page, or names its rows (the one shown, its person's);
    # the counts read the index only.
    rows_read = [sql for sql in from_objections if "count(" not in sql]
    named = re.compile(r"WHERE objections\.(id|subject_id) (=|IN)")
    assert all("LIMIT" in sql or named.search(sql) for sql in rows_read), rows_read
    assert _whole_table_reads(ledger, statements) == []


@SQLITE_ONLY
def test_the_api_lists_objections_masked_and_audits_the_address_read(app: Any, world: World) -> None:
    def viewed() -> list[dict[str, Any]]:
        with world.ledger.engine.connect() as conn:
            rows = conn.execute(
                select(audit_entries.c.payload).where(audit_entries.c.action == "subject.viewed")
            ).scalars()
            return [json.loads(row) for row in rows]

    client = TestClient(app)
    api_login(client, "vic")
    before = len(viewed())
    for status in ("pending", "all"):
        listed = client.get(f"/api/objections?status={status}")
        assert listed.status_code == 200
        assert world.objector not in listed.text
        item = next(i for i in listed.json()["items"] if i["id"] == world.objection_id)
        assert item["email"] == mask_email(world.objector)
    assert len(viewed()) == before  # a list reads nobody's record

    detail = client.get(f"/api/objections/{world.objection_id}").json()
    assert detail["objection"]["email"] == world.objector
    assert detail["subject"]["email"] == world.objector
    reads = viewed()[before:]
    assert len(reads) == 1
    assert reads[0]["actor"] == "vic" and reads[0]["source"] == "api"
    assert reads[0]["what"] == {"objection": world.objection_id}
