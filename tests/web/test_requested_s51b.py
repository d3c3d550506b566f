"""The console's unanswered requests (session 51, round 2).

- ``/requested`` and ``GET /api/requested`` listed every person asked for a consent who did not
  answer by full address, to any viewer, 200 a page through the API, and no read of them was
  audited: a viewer could copy out the whole list and leave no trace. Each person is named by a
  masked address now, as in the objection queue; the person's page (linked by uid) shows the
  address, and that read is audited.
- ``Console.requested()`` read every unanswered request with each person's address, flags,
  objections and evidence at once to show 25 of them. It walks the requests a batch at a time
  now, deciding each as the report does, and reads addresses for the page's rows only.

Each person consented to a newsletter, another purpose of e-mail marketing: a request for email
marketing is chased only where we may e-mail the person marketing on another ground (session 65).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from consentsync.accounts import Accounts
from consentsync.config import load_config
from consentsync.domain import ConsentStatus
from consentsync.ledger import console_queries
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries
from consentsync.ledger.service import Ledger
from consentsync.sync.plan import mask_email
from consentsync.web.console import Console
from consentsync.web.server import build
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.web.conftest import PASSWORDS, api_login, log_in


def _ask(
    ledger: Ledger, clock: Clock, email: str, *, days_ago: int, purpose: str = "email_marketing"
) -> None:
    at = clock.now - timedelta(days=days_ago)
    ledger.record(
        Identity(email=email),
        consent_value(ConsentStatus.REQUESTED, at, clock.now, purpose=purpose, basis=None),
    )


NEWSLETTER = {"key": "newsletter", "name": "Newsletter", "direct_marketing": True, "default_basis": "consent",
              "channels": ["email"]}  # fmt: skip


@pytest.fixture
def config_path(config_path: Path) -> Path:
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    data["purposes"].append(NEWSLETTER)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config_path


def _people(ledger: Ledger, clock: Clock, count: int) -> list[str]:
    """``count`` people asked at interleaved times (some on the same day, so that ties are
    ordered by person), every third kept off the list by a rule the policy decides."""
    emails = []
    for n in range(count):
        email = f"person{n}@example.org"
        emails.append(email)
        at = clock.now - timedelta(days=90)
        subscribed = consent_value(
            ConsentStatus.GRANTED, at, clock.now, purpose="newsletter", evidence_ref="f:1"
        )
        ledger.record(Identity(email=email), subscribed)
        _ask(ledger, clock, email, days_ago=40 + (n * 7) % 11)
        _ask(ledger, clock, email, days_ago=45 + n % 3, purpose="profiling")
        if n % 3 == 1:
            ledger.raise_objection(email, "email_marketing")  # upheld at once: no marketing mail
        elif n % 3 == 2:
            ledger.raise_objection(email, "profiling")  # pending review: profiling only
        if n % 5 == 4:
            ledger.restrict(email, restricted=True, reason="disputed")
    return emails


@pytest.fixture
def console(ledger: Ledger, config_path: Path, clock: Clock) -> Console:
    ledger.clock = clock
    return Console(load_config(config_path), ledger)


def test_the_console_pages_list_exactly_the_report_in_its_order(
    ledger: Ledger, clock: Clock, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    _people(ledger, clock, 14)
    # Batches smaller than a page and not dividing it: blocked requests fall on every boundary.
    monkeypatch.setattr(console_queries, "REQUESTED_BATCH", 4)
    report = [
        (r["subject"], r["purpose"], r["channel"], r["requested_since"]) for r in ledger.stale_requests(30)
    ]
    assert len(report) > 10
    shown: list[tuple[Any, ...]] = []
    for page in range(1, 10):
        found = console.requested(older_than_days=30, page=page, per_page=5)
        assert found.total == len(report)
        shown += [(r["subject"], r["purpose"], r["channel"], r["requested_since"]) for r in found.items]
    assert shown == report  # oldest first, none lost, none shown twice
    assert console.requested(older_than_days=365, page=1).total == 0


def test_a_page_decides_the_requests_a_batch_at_a_time(
    ledger: Ledger, clock: Clock, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What one page view holds in memory at once is a batch, not every unanswered request with
    each person's flags, objections and evidence."""
    _people(ledger, clock, 12)
    monkeypatch.setattr(console_queries, "REQUESTED_BATCH", 4)
    sizes: list[int] = []
    contexts = Ledger._contexts

    def counted(self: Ledger, conn: Any, subject_ids: set[int]) -> Any:
        sizes.append(len(subject_ids))
        return contexts(self, conn, subject_ids)

    monkeypatch.setattr(Ledger, "_contexts", counted)
    found = console.requested(older_than_days=30, page=2, per_page=3)
    assert len(found.items) == 3 and found.total > 6
    assert sizes and max(sizes) <= 4, sizes


def test_the_lists_mask_every_address_and_the_persons_page_is_audited(
    ledger: Ledger, clock: Clock, config_path: Path
) -> None:
    ledger.clock = clock
    emails = _people(ledger, clock, 6)
    Accounts(ledger.engine).add("vic", "viewer", PASSWORDS["vic"], actor="test")
    client = TestClient(build(load_config(config_path), ledger))
    api_login(client, "vic")
    found = client.get("/api/requested", params={"per_page": 200, "older_than": 30}).json()
    assert found["items"], found
    text = json.dumps(found)
    assert not [email for email in emails if email in text]  # no full address, to any viewer
    address = {uid: email for email in emails for uid in ledger.subject_uids_for_email(email)}
    assert all(item["email"] == mask_email(address[item["subject"]]) for item in found["items"])
    page = log_in(TestClient(build(load_config(config_path), ledger)), "vic")
    html = page.get("/requested", params={"older_than": 30}).text
    assert not [email for email in emails if email in html]
    first = found["items"][0]["subject"]
    assert f'href="/subjects/{first}"' in html
    # The address is on the person's page, and reading it is written down.
    with ledger.engine.connect() as conn:
        before = conn.execute(
            select(audit_entries.c.seq).where(audit_entries.c.action == "subject.viewed")
        ).all()
    person = page.get(f"/subjects/{first}")
    assert person.status_code == 200
    assert address[first] in person.text
    with ledger.engine.connect() as conn:
        viewed = conn.execute(
            select(audit_entries.c.subject_uid).where(audit_entries.c.action == "subject.viewed")
        ).all()
    assert len(viewed) == len(before) + 1 and viewed[-1].subject_uid == first


def test_a_page_reads_the_requests_through_their_partial_index(
    ledger: Ledger, clock: Clock, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk finds requested states by age through the partial index of 0012, batch after
    batch: a term that did not imply the index's condition would read every state each batch."""
    from sqlalchemy import event

    from tests.integration.test_ledger_query_plans import _capture, _whole_table_reads

    _people(ledger, clock, 9)
    monkeypatch.setattr(console_queries, "REQUESTED_BATCH", 4)
    statements = _capture(ledger)
    try:
        found = console.requested(older_than_days=30, page=2, per_page=3)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)
    assert found.items
    assert sum("FROM consent_states" in sql for sql, _ in statements) >= 2
    assert _whole_table_reads(ledger, statements) == []
