"""The bulk recording path on PostgreSQL as on SQLite: the same stream gives the same events,
states and audit trail on both; the chain verifies after batched writes; and once a load has
grown the tables, PostgreSQL has statistics and looks people's events and emails up through their
indexes (without them it read all of consent_events for every replay check)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, event, select

from consentsync import audit
from consentsync.app import INIT_ACTIONS, open_ledger
from consentsync.config import load_config, write_starter
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.bulk import select_in
from consentsync.ledger.engine import ANALYSE_MIN_ROWS, statistics_settled
from consentsync.ledger.identity import CrmLink, Identity
from consentsync.ledger.schema import (
    audit_entries,
    consent_events,
    consent_states,
    crm_links,
    state_changes,
    subject_identifiers,
    subjects,
)
from consentsync.ledger.service import Ledger, RecordRequest
from tests.conftest import Clock

KEYS = 10
STATUSES = [ConsentStatus.GRANTED, ConsentStatus.WITHDRAWN, ConsentStatus.GRANTED, ConsentStatus.REFUSED]


def _stream(ledger: Ledger, events: int, people: int, start: datetime) -> Iterator[RecordRequest]:
    """Known and new people, by email and by CRM record, and every tenth event a replay."""
    for index in range(events):
        person = (index * 7919) % people
        link = CrmLink("salesforce", "Contact", f"003{person:012d}") if person % 3 == 0 else None
        at = start + timedelta(minutes=index - index % 10 if index % 10 == 9 else index)
        yield RecordRequest(
            Identity(email=f"person{person}@example.org", link=link),
            Evidence(
                purpose="email_marketing",
                channel="email",
                status=STATUSES[index % len(STATUSES)],
                basis=LawfulBasis.CONSENT,
                event_time=at,
                observed_at=ledger.clock(),
                source="salesforce" if link else "web_form",
                origin=Origin.CRM if link else Origin.CAPTURE,
                notice_version=None if link else "v1",
            ),
        )


# conftest's ledger_url, on PostgreSQL only (skipped, saying why, without a server).
on_postgres = pytest.mark.parametrize(
    "ledger_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def _open(url: str, folder: Path, clock: Clock) -> Ledger:
    folder.mkdir()
    write_starter(folder / "consentsync.yaml", url)
    ledger = open_ledger(load_config(folder / "consentsync.yaml"), migrate=True)
    ledger.clock = clock
    return ledger


def _contents(conn: Connection) -> dict[str, Any]:
    """Every row the recording path writes, with subjects named by email instead of their
    random uid (and the audit hashes, which cover the uid, left out)."""
    uid_email = dict(
        conn.execute(
            select(subjects.c.uid, subject_identifiers.c.value).join(
                subject_identifiers, subject_identifiers.c.subject_id == subjects.c.id
            )
        ).all()
    )
    trail = []
    for row in conn.execute(select(audit_entries).order_by(audit_entries.c.seq)):
        payload = orjson.loads(row.payload)
        payload["subject"] = uid_email.get(payload["subject"], payload["subject"])
        if row.action in INIT_ACTIONS:
            del payload["at"]  # written as the ledger opens, by the real clock
        trail.append((row.seq, row.action, payload))
    events = conn.execute(select(consent_events).order_by(consent_events.c.id)).all()
    states = conn.execute(
        select(consent_states).order_by(consent_states.c.subject_id, consent_states.c.purpose)
    ).all()
    return {
        "people": conn.execute(select(subject_identifiers).order_by(subject_identifiers.c.id)).all(),
        "links": conn.execute(select(crm_links).order_by(crm_links.c.id)).all(),
        "events": [tuple(row) for row in events],
        "states": [tuple(row) for row in states],
        "changes": conn.execute(select(state_changes.c.subject_id).order_by(state_changes.c.id)).all(),
        "trail": trail,
    }


@on_postgres
def test_the_same_stream_gives_the_same_ledger_on_sqlite_and_postgresql(
    tmp_path: Path, ledger_url: str, clock: Clock
) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    results = []
    for url in (f"sqlite:///{tmp_path / 'ledger.db'}", ledger_url):
        ledger = _open(url, tmp_path / str(len(results)), clock)
        first = ledger.record_many(_stream(ledger, 900, 300, start), batch_size=250)
        # A second call meets everyone again, replays included.
        second = ledger.record_many(_stream(ledger, 600, 400, start), batch_size=170)
        with ledger.engine.connect() as conn:
            assert audit.verify(conn).ok
            results.append((first, second, _contents(conn)))
        ledger.engine.dispose()
    (sqlite_first, sqlite_second, on_sqlite), (pg_first, pg_second, on_postgres) = results
    assert (sqlite_first, sqlite_second) == (pg_first, pg_second)
    assert sqlite_second.duplicates > 0 and sqlite_first.state_changes > 0
    for name in on_sqlite:
        assert on_sqlite[name] == on_postgres[name], name


def test_the_audit_chain_verifies_after_batched_writes(ledger: Ledger) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    stats = ledger.record_many(_stream(ledger, 1200, 500, start), batch_size=300)
    ledger.record(
        Identity(email="person1@example.org"), next(_stream(ledger, 1, 1, start + timedelta(days=9))).evidence
    )
    with ledger.engine.connect() as conn:
        result = audit.verify(conn)
        recorded = audit.count(conn, action="consent.recorded")
    assert result.ok, result.problem
    assert recorded == stats.recorded + 1
    assert result.entries_checked == result.head_seq


def _plan(conn: Connection, sql: str, params: tuple[Any, ...]) -> str:
    return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}", params))


@on_postgres
def test_after_a_large_load_postgresql_finds_peoples_events_and_emails_through_their_indexes(
    ledger: Ledger,
) -> None:
    events = 3 * ANALYSE_MIN_ROWS
    ledger.record_many(
        _stream(ledger, events, events // 2, datetime(2025, 1, 1, tzinfo=UTC)), batch_size=1000
    )
    with ledger.engine.connect() as conn:
        analysed = dict(
            conn.exec_driver_sql(
                "SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables"
                " WHERE schemaname = current_schema()"
            ).all()
        )
        assert analysed["consent_events"] and analysed["subject_identifiers"], analysed
        # A sync page's worth of keys: on a table this small a whole batch's are read faster
        # sequentially, and PostgreSQL, knowing the table, rightly does so.
        people = sorted(
            row[0] for row in conn.execute(select(consent_events.c.subject_id).distinct().limit(KEYS))
        )
        emails = [f"person{n}@example.org" for n in range(KEYS)]
        # The statements the recording path sends (bulk.select_in), captured as they are sent.
        sent: list[tuple[str, tuple[Any, ...]]] = []
        execute = conn.exec_driver_sql

        def capture(sql: str, params: Any = None) -> Any:
            sent.append((sql, params))
            return execute(sql, params)

        conn.exec_driver_sql = capture  # type: ignore[method-assign]
        # The replay check: the fingerprints of the page's people (the key (subject_id, fingerprint)).
        replay = select_in(conn, consent_events, ("subject_id", "fingerprint"), "subject_id", people)
        assert {subject_id for subject_id, _ in replay} == set(people)
        found = select_in(
            conn, subject_identifiers, ("value", "subject_id"), "value", emails, equal=[("kind", "email")]
        )
        assert len(list(found)) == KEYS
        conn.exec_driver_sql = execute  # type: ignore[method-assign]
        plans = [_plan(conn, sql, params) for sql, params in sent]
    assert len(plans) == 2
    for plan in plans:
        assert "Index" in plan and "Seq Scan" not in plan, plan


@on_postgres
def test_grown_tables_are_analysed_beside_the_writer_once_its_transaction_ends(ledger: Ledger) -> None:
    """The writer never waits for an ANALYZE: the analysis starts after the transaction that grew
    the table ends, on another connection, and counts that transaction's rows."""
    rows = ANALYSE_MIN_ROWS + 500
    sent: list[str] = []

    def on_writer(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    with ledger.engine.connect() as conn:
        with conn.begin():
            event.listen(conn, "before_cursor_execute", on_writer)
            ledger.link_in(
                conn,
                [
                    Identity(email=f"grown{n}@example.org", link=CrmLink("sf", "Contact", f"g{n}"))
                    for n in range(rows)
                ],
            )
            event.remove(conn, "before_cursor_execute", on_writer)
            # The analysis asked for waits for this transaction: it cannot have run yet.
            assert not statistics_settled(ledger.engine, timeout=0.5)
            conn.execute(select(subjects.c.id).limit(1))  # the writer goes on meanwhile
        assert statistics_settled(ledger.engine, timeout=30)
        sizes = dict(
            conn.exec_driver_sql(
                "SELECT c.relname, c.reltuples FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
                " WHERE s.schemaname = current_schema() AND s.last_analyze IS NOT NULL"
            ).all()
        )
    assert not [statement for statement in sent if statement.lstrip().upper().startswith("ANALYZE")]
    # Analysed after the commit: the transaction's own rows are counted.
    assert sizes.get("subject_identifiers", 0) >= rows, sizes
    assert sizes.get("crm_links", 0) >= rows, sizes
