"""The lookups of merged links by their survivor's id (an erasure sparing a merge's survivor that
holds a person not erased, sync/engine.py ``_merged_into``; an erasure finding who holds the
survivors of the erased people's merged records, ledger/merge_survivors.py) follow chains of merges
and go through the partial index ``ix_crm_links_merged_into`` (migration 0025), not every link of
the connector. On SQLite and, where CONSENTSYNC_TEST_POSTGRES_URL is set, PostgreSQL."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlalchemy import event, func, insert, select

from consentsync.ledger.merge_survivors import survivors_holders
from consentsync.ledger.schema import crm_links, state_changes
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine
from tests.conftest import Clock
from tests.test_s66_shared_marker_index import _plan, contacts_granted

INDEX = "ix_crm_links_merged_into"
PEOPLE = ("anna@example.org", "bert@example.org", "carl@example.org", "dora@example.org")


def _chain(ledger: Ledger, clock: Clock) -> dict[str, int]:
    """Four people, each with a Contact (003...0 to 3); anna's merged into bert's, bert's into
    carl's (a chain); dora's stands apart. Returns the people's ids by address."""
    now = clock()
    contacts_granted(ledger, now, "sf", PEOPLE)
    with ledger.engine.begin() as conn:
        ids = {
            email: conn.execute(
                select(crm_links.c.subject_id).where(crm_links.c.record_id == f"003{n:012d}")
            ).scalar_one()
            for n, email in enumerate(PEOPLE)
        }
        for merged, survivor in ((0, 1), (1, 2)):
            conn.execute(
                crm_links.update()
                .where(crm_links.c.record_id == f"003{merged:012d}")
                .values(gone_at=now, merged_into=f"003{survivor:012d}")
            )
        # A lead of dora's converted into carl's Contact: merged into another object.
        conn.execute(
            insert(crm_links).values(
                subject_id=ids[PEOPLE[3]],
                connector="sf",
                object_type="Lead",
                record_id=f"00Q{3:012d}",
                linked_at=now,
                gone_at=now,
                merged_into=f"003{2:012d}",
                merged_into_object="Contact",
            )
        )
    return ids


def _captured(ledger: Ledger, call: Any) -> tuple[Any, list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, _many: bool) -> None:
        statements.append((sql, params))

    event.listen(ledger.engine, "before_cursor_execute", capture)
    try:
        with ledger.engine.connect() as conn:
            result = call(conn)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", capture)
    return result, statements


def _by_merged_into(ledger: Ledger, statements: list[tuple[str, Any]]) -> list[str]:
    reads = [
        (sql, params) for sql, params in statements if "merged_into IN" in sql or "merged_into = ANY" in sql
    ]
    assert reads, statements
    with ledger.engine.connect() as conn:
        return [_plan(conn, sql, params) for sql, params in reads]


def test_the_survivor_of_a_chain_names_everyone_merged_into_it(ledger: Ledger, clock: Clock) -> None:
    ids = _chain(ledger, clock)
    with ledger.engine.connect() as conn:
        carl = conn.execute(select(crm_links).where(crm_links.c.record_id == f"003{2:012d}")).one()
    engine = SimpleNamespace(name="sf")
    found, statements = _captured(ledger, lambda conn: SyncEngine._merged_into(engine, conn, [carl]))  # type: ignore[arg-type]
    assert {link: set(people) for link, people in found.items()} == {
        carl.id: {ids[PEOPLE[0]], ids[PEOPLE[1]], ids[PEOPLE[3]]}
    }
    for plan in _by_merged_into(ledger, statements):
        assert INDEX in plan and "Seq Scan" not in plan, plan


def test_an_erasure_examines_who_holds_its_merged_records_survivors(ledger: Ledger, clock: Clock) -> None:
    """Erasing anna (merged into bert's, which went into carl's) puts carl's person on the change
    feed, so each connector weighs the erasure's action on the survivor again."""
    ids = _chain(ledger, clock)
    holders, _statements = _captured(ledger, lambda conn: survivors_holders(conn, [ids[PEOPLE[0]]]))
    assert holders == {ids[PEOPLE[1]], ids[PEOPLE[2]]}
    with ledger.engine.connect() as conn:
        fed_before = conn.execute(select(func.max(state_changes.c.id))).scalar_one()
    clock.advance(minutes=5)
    ledger.erase(PEOPLE[0], reason="asked")
    with ledger.engine.connect() as conn:
        fed = set(
            conn.execute(select(state_changes.c.subject_id).where(state_changes.c.id > fed_before)).scalars()
        )
    assert {ids[PEOPLE[1]], ids[PEOPLE[2]]} <= fed and ids[PEOPLE[3]] not in fed, fed
