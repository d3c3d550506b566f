"""The recording path looks people, states and fingerprints up through indexes, never by reading
a whole table: a scan costs nothing on a test ledger and everything on one with a million rows
(the email lookup once scanned ``subject_identifiers`` on every batch, because the unique index
leads with ``kind`` and the query named only ``value``).

Checked on SQLite, whose planner takes an index whenever one applies (EXPLAIN QUERY PLAN: no
SCAN of a growing table), and on PostgreSQL, whose planner chooses by table size and reads a tiny
test table sequentially whatever its indexes: there each statement (SELECT, UPDATE, DELETE,
INSERT ... SELECT) is explained with sequential scans, hash and merge joins priced out, so that
the planner takes an index wherever one applies, and a sequential scan (or an index scan with no
index condition) of a growing table left in the plan means that no index serves the statement.

Neither check sees a lookup that an index serves on too few of its columns (the links of a
connector read through an index on ``connector`` alone): on a tiny table PostgreSQL leaves
even a usable ``= ANY(...)`` to a filter. test_sync_cost_growth measures that, on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import event

from consentsync import audit
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import CrmLink, Identity
from consentsync.ledger.service import Ledger, RecordRequest
from consentsync.sync.engine import SyncOptions
from tests.integration.test_sync_engine import _engine as sync_engine

# Tables that grow with the number of people or events.
GROWING = {
    "subjects",
    "subject_identifiers",
    "crm_links",
    "consent_events",
    "consent_states",
    "objections",
    "suppressions",
    "audit_entries",
    "audit_details",
    "state_changes",
    "crm_snapshots",
    "outbox",
    "quarantine",
    "sync_runs",
}


def _requests(ledger: Ledger, people: int, start: datetime) -> Iterator[RecordRequest]:
    for person in range(people):
        link = CrmLink("salesforce", "Contact", f"003{person:012d}") if person % 2 else None
        yield RecordRequest(
            Identity(email=f"person{person}@example.org", link=link),
            Evidence(
                purpose="email_marketing",
                channel="email",
                status=ConsentStatus.GRANTED if person % 3 else ConsentStatus.WITHDRAWN,
                basis=LawfulBasis.CONSENT,
                event_time=start + timedelta(minutes=person),
                observed_at=ledger.clock(),
                source="salesforce" if link else "web_form",
                origin=Origin.CRM if link else Origin.CAPTURE,
            ),
        )


class _Statements(list[tuple[str, Any]]):
    """The statements executed one at a time; ``many`` those executed for many parameter sets
    (an executemany, by its first set, or an insertmanyvalues batch): PostgreSQL plans them."""

    def __init__(self) -> None:
        super().__init__()
        self.many: list[tuple[str, Any]] = []

    def append_statement(
        self, _conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool
    ) -> None:
        if not many:
            self.append((sql, params))
        elif params:
            self.many.append((sql, params[0] if isinstance(params, list | tuple) else params))


def _capture(ledger: Ledger) -> _Statements:
    statements = _Statements()
    event.listen(ledger.engine, "before_cursor_execute", statements.append_statement)
    return statements


def _scans(ledger: Ledger, statements: list[tuple[str, Any]]) -> list[str]:
    """The full-table (or full-index) reads the captured SELECTs would make, one line each."""
    found: list[str] = []
    raw = ledger.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for sql, params in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            for _id, _parent, _unused, detail in cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params):
                words = detail.split()
                if words[0] == "SCAN" and words[1] in GROWING:
                    found.append(f"{detail}  <-  {' '.join(sql.split())[:160]}")
    finally:
        raw.close()
    return found


# What PostgreSQL plans: COPY and the session's own statements (SET, locks) read no table.
_PLANNED = ("SELECT", "WITH", "UPDATE", "DELETE", "INSERT")
# Priced out, so that PostgreSQL takes an index wherever one applies whatever the tables' sizes:
# sequential scans, and the joins that read their inner table whole (a hash join hashes all of
# it, a merge join walks all of its index), leaving nested loops that look each row up.
_WHOLE_TABLE_STRATEGIES = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")


def _full_reads(node: dict[str, Any], limited: bool = False) -> Iterator[str]:
    """The nodes of a PostgreSQL plan (EXPLAIN FORMAT JSON) that read a growing table whole: a
    sequential scan, or an index scan without an index condition (which the planner takes for
    an ORDER BY once sequential scans are priced out) unless a LIMIT stops it at its first rows
    (``max(id)``, the oldest pending entry)."""
    kind, table = node["Node Type"], node.get("Relation Name")
    if table in GROWING and (
        kind == "Seq Scan"
        or (
            kind in ("Index Scan", "Index Only Scan")
            and "Index Cond" not in node
            and not (limited and "Filter" not in node)
        )
    ):
        yield f"{kind} on {table}" + (f" using {node['Index Name']}" if "Index Name" in node else "")
    for child in node.get("Plans", ()):
        yield from _full_reads(child, limited=kind == "Limit")


def _pg_scans(ledger: Ledger, statements: _Statements) -> list[str]:
    """The whole-table reads the captured statements (SELECT, UPDATE, DELETE, INSERT ... SELECT,
    executemany ones by their first parameter set) would make on PostgreSQL with sequential
    scans priced out, one line each. Explained in a transaction that is rolled back."""
    found: list[str] = []
    raw = ledger.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        with conn.transaction(force_rollback=True), conn.cursor() as cursor:
            for strategy in _WHOLE_TABLE_STRATEGIES:
                cursor.execute(f"SET LOCAL {strategy} = off")
            for sql, params in [*statements, *statements.many]:
                if not sql.lstrip().upper().startswith(_PLANNED):
                    continue
                cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
                row = cursor.fetchone()
                assert row is not None
                found += [
                    f"{read}  <-  {' '.join(sql.split())[:160]}" for read in _full_reads(row[0][0]["Plan"])
                ]
    finally:
        raw.close()
    return found


def _whole_table_reads(ledger: Ledger, statements: _Statements) -> list[str]:
    if ledger.engine.dialect.name == "postgresql":
        return _pg_scans(ledger, statements)
    return _scans(ledger, statements)


def test_recording_reads_every_growing_table_through_an_index(ledger: Ledger) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    ledger.record_many(_requests(ledger, 40, start), batch_size=10)  # people who already exist
    ledger.raise_objection("person4@example.org", "profiling")
    statements = _capture(ledger)
    try:
        # Known and new people, by email and by CRM record, through both entry points.
        ledger.record_many(_requests(ledger, 80, start + timedelta(days=1)), batch_size=25)
        ledger.record(
            Identity(email="person2@example.org"),
            next(_requests(ledger, 1, start + timedelta(days=2))).evidence,
        )
    finally:
        event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)

    assert any("subject_identifiers" in sql for sql, _ in statements), "no email lookup was captured"
    assert any("crm_links" in sql for sql, _ in statements), "no CRM link lookup was captured"
    assert _whole_table_reads(ledger, statements) == []


def test_a_sync_run_reads_every_growing_table_through_an_index(ledger: Ledger, config_path: Path) -> None:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(60, seed=5)
        # A push guard that never holds, so that the pushes waiting are counted.
        guarded = SyncOptions(batch_size=37, signpost_lag_seconds=0, guard_max_records=10**6)
        engine = sync_engine(ledger, config_path, sandbox, options=guarded)
        # Both runs: the first creates the people (its lookups of new addresses, of erased
        # ones among them, run only then), the second meets them again.
        statements = _capture(ledger)
        try:
            first = engine.run(full=True)
            # Opt-outs to read, and to push to the other records of the same people.
            subscribed = [r for r in sandbox.org.records("Contact") if not r.get("HasOptedOutOfEmail")]
            for record in subscribed[:4]:
                sandbox.org.update(record["Id"], HasOptedOutOfEmail=True)
            # Records read again with a new address: which addresses their people left is weighed.
            for n, record in enumerate(subscribed[4:7]):
                sandbox.org.update(record["Id"], Email=f"moved.{n}@example.net")
            second = engine.run()
        finally:
            event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)
    assert first.status == "succeeded", first.error
    assert second.status == "succeeded", second.error
    assert second.counts.evidence_recorded >= 4
    assert any("crm_snapshots" in sql for sql, _ in statements), "no snapshot read was captured"
    erased_lookup = ("suppressions.email_hmac IN", "suppressions.email_hmac = ANY")  # SQLite, PostgreSQL
    assert any(form in sql for sql, _ in statements for form in erased_lookup), "no erased-address lookup"
    assert any("count(*)" in sql and "outbox" in sql for sql, _ in statements), "no push guard count"
    left = "UPDATE subject_identifiers SET left_at"
    assert any(sql.startswith(left) for sql, _ in statements), "no address was found left"
    assert _whole_table_reads(ledger, statements) == []


def test_expiry_and_chasing_read_states_through_their_partial_indexes(ledger: Ledger) -> None:
    """The expiry run and the list of requests to chase find their states through the partial
    indexes of 0012 (consents with an expiry; requested ones by age): a query whose terms did not
    imply an index's condition would read every state instead."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    ledger.record_many(_requests(ledger, 30, start), batch_size=10)
    statements = _capture(ledger)
    try:
        ledger.expire_due()
        ledger.stale_requests(older_than_days=1)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)
    state_reads = [sql for sql, _ in statements if "FROM consent_states" in sql]
    assert len(state_reads) >= 2, "the expiry and chasing queries were not captured"
    assert _whole_table_reads(ledger, statements) == []


def test_a_persons_audit_trail_is_read_through_the_subject_indexes(ledger: Ledger) -> None:
    """A person's entries are found by subject id, and those written before 0013 (no id) by uid
    through the partial index that holds only them: a term that read either way without an index
    would read the whole log, the largest table of a ledger."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    ledger.record_many(_requests(ledger, 30, start), batch_size=10)
    uids = ledger.subject_uids_for_email("person3@example.org")
    statements = _capture(ledger)
    try:
        with ledger.engine.connect() as conn:
            trail = list(audit.entries(conn, subject_uids=uids, newest_first=True, limit=50))
            counted = audit.count(conn, subject_uids=uids, action="consent.recorded")
    finally:
        event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)
    assert trail and {entry["subject"] for entry in trail} == set(uids)
    assert counted == 1
    assert _whole_table_reads(ledger, statements) == []
