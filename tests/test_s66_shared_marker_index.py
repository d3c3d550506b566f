"""An erasure finds the people sharing a record with the erased (sync/shared.py: their ids on the
shared record's snapshot) through the partial index of the shared snapshots,
``ix_crm_snapshots_shared`` (migration 0024), not by reading every snapshot's text: about 0.1 s
an erasure on either database at 300,000 snapshots before, growing with the ledger. Each test
runs on SQLite and, where CONSENTSYNC_TEST_POSTGRES_URL is set, on PostgreSQL (skipped
otherwise, saying so)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, event, func, insert, inspect, select, text

from consentsync.app import SCHEMA_REVISION, migration_state
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin, canonical_json
from consentsync.ledger import schema
from consentsync.ledger.engine import make_engine
from consentsync.ledger.identity import CrmLink, Identity
from consentsync.ledger.migrate import alembic_config, upgrade
from consentsync.ledger.schema import crm_links, state_changes
from consentsync.ledger.service import Ledger, RecordRequest
from consentsync.ledger.shared_marker import SHARED_KEY, SHARED_PREFIX, sharing_with
from consentsync.sync import shared
from tests.conftest import Clock

INDEX = "ix_crm_snapshots_shared"
WORK, HOME, OTHER = "kim.work@example.org", "kim.home@example.org", "someone@example.org"
INDIVIDUAL = CrmLink("salesforce", "Individual", "0PK000000000001")
MIGRATION = Path(schema.__file__).parent / "migrations/versions/0024_shared_snapshots_indexed.py"


def _migration() -> Any:
    spec = importlib.util.spec_from_file_location("migration_0024", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_index_condition_is_the_markers_start() -> None:
    """The index (schema.py and the revision each write it out) holds the snapshots whose text
    starts as a marked one's does: the start canonical JSON writes for the marker key."""
    assert schema.SHARED_SNAPSHOT_PREFIX == SHARED_PREFIX == _migration()._PREFIX
    assert canonical_json({SHARED_KEY: [3]}).startswith(SHARED_PREFIX) and SHARED_PREFIX.isascii()
    assert schema.SNAPSHOT_IS_SHARED == _migration()._SHARED


def contacts_granted(ledger: Ledger, now: datetime, connector: str, emails: Sequence[str]) -> None:
    """Each of ``emails`` a person with a Contact of ``connector`` (003 and the address's place,
    12 digits) granting e-mail marketing, as read from the CRM."""
    requests = [
        RecordRequest(
            Identity(email=email, link=CrmLink(connector, "Contact", f"003{n:012d}")),
            Evidence(
                purpose="email_marketing",
                channel="email",
                status=ConsentStatus.GRANTED,
                basis=LawfulBasis.CONSENT,
                event_time=now - timedelta(days=1),
                observed_at=now,
                source=connector,
                origin=Origin.CRM,
            ),
        )
        for n, email in enumerate(emails)
    ]
    ledger.record_many(iter(requests), batch_size=10)


def _person_ids(ledger: Ledger, clock: Clock) -> dict[str, int]:
    """Three people, each with a Contact and a consent; the home person also holds the
    Individual, which the work person's Contact points to (marked as sync/shared.py marks it)."""
    now = clock()
    contacts_granted(ledger, now, "salesforce", (WORK, HOME, OTHER))
    with ledger.engine.begin() as conn:
        ids = {
            email: conn.execute(
                select(crm_links.c.subject_id).where(crm_links.c.record_id == f"003{n:012d}")
            ).scalar_one()
            for n, email in enumerate((WORK, HOME, OTHER))
        }
        conn.execute(
            insert(crm_links).values(
                subject_id=ids[HOME],
                connector=INDIVIDUAL.connector,
                object_type=INDIVIDUAL.object_type,
                record_id=INDIVIDUAL.record_id,
                linked_at=now,
            )
        )
        assert shared.mark(conn, "salesforce", {INDIVIDUAL: {ids[WORK]}}, now) == 1
    return ids


def _plan(conn: Connection, sql: str, params: Any) -> str:
    """How the database would run ``sql``: SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN
    with sequential scans priced out (a test table is tiny: only then does a plan say whether an
    index can serve the statement at all, as tests/integration/test_ledger_query_plans.py does)."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
        return "\n".join(row[3] for row in rows)
    raw = conn.connection.driver_connection
    with raw.transaction(force_rollback=True), raw.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_an_erasure_finds_the_sharer_through_the_index(ledger: Ledger, clock: Clock) -> None:
    ids = _person_ids(ledger, clock)
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, _many: bool) -> None:
        statements.append((sql, params))

    with ledger.engine.connect() as conn:
        fed_before = conn.execute(select(func.max(state_changes.c.id))).scalar_one()
    clock.advance(minutes=5)
    event.listen(ledger.engine, "before_cursor_execute", capture)
    try:
        ledger.erase(WORK, reason="asked")
    finally:
        event.remove(ledger.engine, "before_cursor_execute", capture)

    with ledger.engine.connect() as conn:
        fed = set(
            conn.execute(select(state_changes.c.subject_id).where(state_changes.c.id > fed_before)).scalars()
        )
        # The home person holds the Individual the erased person's Contact points to: announced,
        # so that each connector weighs the erasure's action on it; the unrelated person not.
        assert fed == {ids[WORK], ids[HOME]}
        assert sharing_with(conn, [ids[WORK]]) == {ids[HOME]}
        assert sharing_with(conn, [ids[OTHER]]) == set()
        marker_reads = [(sql, params) for sql, params in statements if "substr(crm_snapshots.fields" in sql]
        assert len(marker_reads) == 1, statements
        plan = _plan(conn, *marker_reads[0])
    assert INDEX in plan, plan
    assert "Seq Scan" not in plan and "SCAN crm_snapshots\n" not in f"{plan}\n", plan


def _index_condition(engine: Engine) -> str | None:
    """The stored definition of the index (its condition included), None where it is not there."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
        else:
            query = (
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :name"
            )
        return conn.execute(text(query), {"name": INDEX}).scalar()


def _two_people_one_marked(engine: Engine) -> None:
    """Person 1's Contact, and person 2's Individual whose snapshot names person 1 as sharing it."""
    marked = canonical_json({SHARED_KEY: [1], "LastName": "Moss"})
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subjects (id, uid, created_at, restricted) VALUES"
                " (1, 'u1', CURRENT_TIMESTAMP, false), (2, 'u2', CURRENT_TIMESTAMP, false)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO crm_links (id, subject_id, connector, object_type, record_id, linked_at) VALUES"
                " (1, 1, 'sf', 'Contact', 'C1', CURRENT_TIMESTAMP),"
                " (2, 2, 'sf', 'Individual', 'I1', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO crm_snapshots (link_id, evidence, fields, updated_at) VALUES"
                " (1, '{}', '{\"LastName\":\"Moss\"}', CURRENT_TIMESTAMP),"
                " (2, '{}', :marked, CURRENT_TIMESTAMP)"
            ),
            {"marked": marked},
        )


def test_0024_adds_the_index_and_downgrade_drops_it(ledger_url: str) -> None:
    """0024 adds the partial index over the snapshots already there (no row touched), and
    downgrading to 0023 drops it only; upgrading again builds it again."""
    engine = make_engine(ledger_url)
    upgrade(engine, "0023")
    _two_people_one_marked(engine)
    assert _index_condition(engine) is None

    def snapshots() -> list[tuple[object, ...]]:
        with engine.connect() as conn:
            query = text("SELECT link_id, fields FROM crm_snapshots ORDER BY link_id")
            return [tuple(row) for row in conn.execute(query)]

    before = snapshots()
    for _ in range(2):
        upgrade(engine)
        assert migration_state(engine) == SCHEMA_REVISION
        condition = _index_condition(engine)
        assert condition is not None and "substr" in condition and SHARED_PREFIX in condition, condition
        assert INDEX in {index["name"] for index in inspect(engine).get_indexes("crm_snapshots")}
        with engine.connect() as conn:
            # The index holds the marked snapshot only (SQLite's INDEXED BY refuses a query whose
            # terms do not imply the index's condition; PostgreSQL has no such hint).
            if engine.dialect.name == "sqlite":
                where = schema.SNAPSHOT_IS_SHARED["sqlite"]
                by_index = f"SELECT link_id FROM crm_snapshots INDEXED BY {INDEX} WHERE {where}"
                held = conn.execute(text(by_index)).scalars()
                assert list(held) == [2]
            assert sharing_with(conn, [1]) == {2}
        assert snapshots() == before
        command.downgrade(alembic_config(engine), "0023")
        assert migration_state(engine) == "0023"
        assert _index_condition(engine) is None
        assert snapshots() == before
    engine.dispose()


def test_a_ledger_at_the_head_is_built_with_the_index(ledger: Ledger) -> None:
    """The ledger the tests start from (a copy of one migrated once, or a dump of it on
    PostgreSQL) has the index as the migration made it."""
    condition = _index_condition(ledger.engine)
    assert condition is not None and SHARED_PREFIX in condition


@pytest.mark.parametrize("ledger_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_0024_and_the_lookup_where_postgresql_reads_backslashes_as_escapes(ledger_url: str) -> None:
    """A server kept with standard_conforming_strings off (for an older application sharing it):
    a plain literal's backslash starts an escape there, and the marker's start ("\\u0000") was
    refused, by the migration and by every erasure's lookup (session 66 review of 546f666). Written
    as an escape string, it means the same under either setting."""
    off = ledger_url.replace(
        quote("-csearch_path="), quote("-cstandard_conforming_strings=off -csearch_path=")
    )
    engine = make_engine(off)
    upgrade(engine, "0023")
    _two_people_one_marked(engine)
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW standard_conforming_strings")).scalar() == "off"
        assert sharing_with(conn, [1]) == {2}
    assert SHARED_PREFIX in str(_index_condition(engine)).replace("\\\\", "\\")
    engine.dispose()
