"""The ledger's bulk statements (ledger/bulk.py) on both databases: an upsert of many rows in one
statement keeps what a statement per row in order would, and a lookup of many values by one
bound array finds what an IN list finds, never more."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from consentsync.ledger.bulk import db_time, insert_returning_ids, one_of, select_in, upsert_rows
from consentsync.ledger.schema import crm_links, crm_snapshots, subjects, sync_cursors, sync_examine
from consentsync.ledger.service import Ledger

CURSOR_COLUMNS = ("connector", "object_type", "cursor", "run_id", "updated_at")
CURSOR_KEY = ("connector", "object_type")


def _cursors(ledger: Ledger) -> dict[tuple[str, str], tuple[str, str]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(sync_cursors).where(sync_cursors.c.connector.like("bulk-%"))).all()
    return {(row.connector, row.object_type): (row.cursor, row.run_id) for row in rows}


def test_an_upsert_keeps_the_last_row_of_each_key_as_rows_one_by_one_would(ledger: Ledger) -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with ledger.engine.begin() as conn:
        at = db_time(conn, now)
        upsert_rows(conn, sync_cursors, CURSOR_COLUMNS, CURSOR_KEY, [("bulk-a", "Contact", "old", "r0", at)])
    rows = [
        ("bulk-a", "Contact", "first", "r1", at),
        ("bulk-a", "Lead", '{"q": "a \\"quoted\\" value", "x": "€漢"}', "r0", at),
        ("bulk-a", "Contact", "second", "r2", at),  # the same key again, later: it wins
        ("bulk-b", "Contact", "", "r3", at),  # an empty text is not a NULL
    ]
    with ledger.engine.begin() as conn:
        upsert_rows(conn, sync_cursors, CURSOR_COLUMNS, CURSOR_KEY, rows)
    assert _cursors(ledger) == {
        ("bulk-a", "Contact"): ("second", "r2"),
        ("bulk-a", "Lead"): ('{"q": "a \\"quoted\\" value", "x": "€漢"}', "r0"),
        ("bulk-b", "Contact"): ("", "r3"),
    }


def test_an_upsert_without_update_leaves_the_rows_that_exist(ledger: Ledger) -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with ledger.engine.begin() as conn:
        at = db_time(conn, now)
        upsert_rows(conn, sync_cursors, CURSOR_COLUMNS, CURSOR_KEY, [("bulk-a", "Contact", "kept", "r1", at)])
        upsert_rows(
            conn,
            sync_cursors,
            CURSOR_COLUMNS,
            CURSOR_KEY,
            [("bulk-a", "Contact", "ignored", "r2", at), ("bulk-a", "Lead", "new", "r0", at)],
            update=False,
        )
    assert _cursors(ledger) == {("bulk-a", "Contact"): ("kept", "r1"), ("bulk-a", "Lead"): ("new", "r0")}


def test_an_upsert_refuses_a_value_too_long_for_its_column_and_cuts_nothing(ledger: Ledger) -> None:
    """SQLite keeps any length; PostgreSQL must refuse it, as a statement per row does, rather
    than cut it to the column's length (an explicit cast to VARCHAR(n) would)."""
    if ledger.engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce a column's length")
    too_long = "x" * 65  # connector is VARCHAR(64)
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with pytest.raises(DBAPIError, match="too long"), ledger.engine.begin() as conn:
        upsert_rows(conn, sync_cursors, CURSOR_COLUMNS, CURSOR_KEY, [(too_long, "Contact", "c", "r0", now)])
    with ledger.engine.connect() as conn:
        assert conn.execute(select(sync_cursors.c.connector)).scalars().all() == []


def test_an_upsert_of_a_whole_page_stores_every_row(ledger: Ledger) -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with ledger.engine.begin() as conn:
        at = db_time(conn, now)
        ids = [
            conn.execute(subjects.insert().values(uid=f"{n:032x}", created_at=now)).inserted_primary_key[0]
            for n in range(3)
        ]
        links = [
            conn.execute(
                crm_links.insert().values(
                    subject_id=ids[n % 3],
                    connector="bulk",
                    object_type="Contact",
                    record_id=f"r{n}",
                    linked_at=now,
                )
            ).inserted_primary_key[0]
            for n in range(1200)
        ]
        snapshot_columns = ("link_id", "evidence", "fields", "identity", "updated_at")
        upsert_rows(
            conn, crm_snapshots, snapshot_columns, ("link_id",), [(i, "[]", "{}", None, at) for i in links]
        )
        upsert_rows(
            conn,
            crm_snapshots,
            snapshot_columns,
            ("link_id",),
            [(i, "[1]", f'{{"n":{i}}}', "h", at) for i in links],
        )
        key = ("connector", "subject_id")
        upsert_rows(conn, sync_examine, key, key, [("bulk", i) for i in ids * 2], update=False)
    with ledger.engine.connect() as conn:
        stored = conn.execute(
            select(crm_snapshots.c.link_id, crm_snapshots.c.fields, crm_snapshots.c.identity)
        ).all()
        marked = conn.execute(
            select(sync_examine.c.subject_id).where(sync_examine.c.connector == "bulk")
        ).scalars()
        assert sorted(marked) == sorted(ids)
    assert sorted(stored) == [(i, f'{{"n":{i}}}', "h") for i in sorted(links)]


def test_one_of_finds_what_an_in_list_finds_and_a_longer_value_finds_nothing(ledger: Ledger) -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with ledger.engine.begin() as conn:
        subject_id = conn.execute(
            subjects.insert().values(uid="0" * 32, created_at=now)
        ).inserted_primary_key[0]
        stored = "r" * 64
        for record_id in (stored, "a", "€漢"):
            conn.execute(
                crm_links.insert().values(
                    subject_id=subject_id,
                    connector="bulk",
                    object_type="Contact",
                    record_id=record_id,
                    linked_at=now,
                )
            )
    with ledger.engine.connect() as conn:

        def found(values: list[str]) -> list[str]:
            query = select(crm_links.c.record_id).where(one_of(conn, crm_links.c.record_id, values))
            return sorted(conn.execute(query).scalars())

        assert found(["a", "€漢", "missing"]) == sorted(["a", "€漢"])
        # A value longer than the column: cut to the column's length it would be ``stored``.
        assert found([stored + "x"]) == []
        assert found([]) == []
        assert sorted(
            conn.execute(
                select(crm_links.c.id).where(one_of(conn, crm_links.c.subject_id, [subject_id]))
            ).scalars()
        ) == sorted(
            conn.execute(select(crm_links.c.id).where(crm_links.c.subject_id.in_([subject_id]))).scalars()
        )


def test_inserted_ids_come_back_in_the_order_of_the_rows(ledger: Ledger) -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    # uids out of order, so that ids given in insertion order but read back by uid would differ.
    uids = [f"{(n * 7919) % 1201:032x}" for n in range(1200)]
    with ledger.engine.begin() as conn:
        at = db_time(conn, now)
        rows = [(uid, at, n % 2 == 0, None) for n, uid in enumerate(uids)]
        ids = insert_returning_ids(
            conn, subjects, ("uid", "created_at", "restricted", "suppression_id"), rows, unique="uid"
        )
    with ledger.engine.connect() as conn:
        stored = dict(
            conn.execute(select(subjects.c.id, subjects.c.uid).where(subjects.c.uid.in_(uids))).all()
        )
        restricted = dict(conn.execute(select(subjects.c.uid, subjects.c.restricted)).all())
    assert len(set(ids)) == len(uids)
    assert [stored[subject_id] for subject_id in ids] == uids
    assert [restricted[uid] for uid in uids] == [n % 2 == 0 for n in range(len(uids))]


def test_a_lookup_with_joins_finds_what_the_core_statement_finds(ledger: Ledger) -> None:
    """``select_in`` with ``join``: the rows an outer-joined Core statement returns, as plain
    tuples, in chunks; NULL where the joined table has no row; a pinned column narrows it."""
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with ledger.engine.begin() as conn:
        at = db_time(conn, now)
        people = [
            conn.execute(
                subjects.insert().values(uid=f"{n:032x}", created_at=now, erased_at=now if n == 1 else None)
            ).inserted_primary_key[0]
            for n in range(3)
        ]
        links = {}
        for n in range(1100):  # more than one chunk of 500 on SQLite
            connector = "bulk" if n % 5 else "other"
            record_id = f"r{n}€漢"
            links[(connector, record_id)] = conn.execute(
                crm_links.insert().values(
                    subject_id=people[n % 3],
                    connector=connector,
                    object_type="Contact",
                    record_id=record_id,
                    linked_at=now,
                )
            ).inserted_primary_key[0]
        snapshot_columns = ("link_id", "evidence", "fields", "identity", "updated_at")
        kept = sorted(links.values())[::3]  # one link in three has a snapshot
        upsert_rows(
            conn,
            crm_snapshots,
            snapshot_columns,
            ("link_id",),
            [(i, "[]", f'{{"n":{i}}}', None, at) for i in kept],
        )
    asked = [f"r{n}€漢" for n in range(0, 1100, 2)] + ["missing"]
    with ledger.engine.connect() as conn:
        found = select_in(
            conn,
            crm_links,
            ("id", "record_id", "crm_snapshots.fields", "subjects.erased_at"),
            "record_id",
            asked,
            equal=(("connector", "bulk"), ("object_type", "Contact")),
            join=((crm_snapshots, "link_id", "id"), (subjects, "id", "subject_id")),
        )
        plain = sorted(
            (link_id, record_id, fields, erased is not None) for link_id, record_id, fields, erased in found
        )
        core = conn.execute(
            select(crm_links.c.id, crm_links.c.record_id, crm_snapshots.c.fields, subjects.c.erased_at)
            .outerjoin(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
            .join(subjects, subjects.c.id == crm_links.c.subject_id)
            .where(
                crm_links.c.connector == "bulk",
                crm_links.c.object_type == "Contact",
                crm_links.c.record_id.in_(asked),
            )
        ).all()
        by_subject = list(
            select_in(
                conn, crm_links, ("id",), "subject_id", [people[1]], join=((subjects, "id", "subject_id"),)
            )
        )
    expected = sorted((row.id, row.record_id, row.fields, row.erased_at is not None) for row in core)
    assert plain == expected
    assert len(plain) == len([n for n in range(0, 1100, 2) if n % 5])  # the other connector's are left out
    assert {fields is None for _, _, fields, _ in plain} == {True, False}
    assert {erased for _, _, _, erased in plain} == {True, False}
    assert sorted(link_id for (link_id,) in by_subject) == sorted(
        link_id for (_, record_id), link_id in links.items() if int(record_id[1:-2]) % 3 == 1
    )
