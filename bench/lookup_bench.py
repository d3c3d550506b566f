"""A page's lookups by record id: the ledger's way (``select_in``) against a Core statement.

    python bench/lookup_bench.py                        # 200,000 links, 1,000 ids a lookup
    python bench/lookup_bench.py --links 1000000 --ids 2000

Every page of a sync looks its records up by id (their links, the people they point to, their
outbox history): ``connector = ? AND object_type = ? AND record_id IN (...)`` through the
(connector, object, record) index. ``peer`` is the statement as one writes it with SQLAlchemy
Core (an expanding IN list, rows wrapped as ``Row``); ``ledger`` is ``ledger.bulk.select_in``,
which the sync engine uses (a plain statement, plain tuples); ``floor`` is the same statement on
the bare sqlite3 cursor. Prints milliseconds per lookup and the ratios.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, insert, select

from consentsync.ledger.bulk import one_of, select_in
from consentsync.ledger.schema import crm_links, metadata


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--links", type=int, default=200_000)
    parser.add_argument("--ids", type=int, default=1_000, help="record ids a lookup asks for")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "links.db"
        engine = create_engine(f"sqlite:///{path}")
        metadata.create_all(engine)
        now = datetime.now(UTC)
        names = [f"0PK{i:012d}" for i in range(args.links)]
        with engine.begin() as conn:
            conn.execute(
                insert(crm_links),
                [
                    {
                        "connector": "sf",
                        "object_type": "Individual",
                        "record_id": name,
                        "subject_id": i + 1,
                        "linked_at": now,
                    }
                    for i, name in enumerate(names)
                ],
            )
        ids = sorted(random.Random(7).sample(names, args.ids))
        raw = sqlite3.connect(path)

        def floor(_conn: Connection) -> dict[str, int]:
            marks = ", ".join("?" for _ in ids)
            statement = (
                "SELECT record_id, subject_id FROM crm_links WHERE connector = ? AND object_type = ? "
                f"AND record_id IN ({marks})"
            )
            return dict(raw.execute(statement, ("sf", "Individual", *ids)).fetchall())

        def peer(conn: Connection) -> dict[str, int]:
            rows = conn.execute(
                select(crm_links.c.record_id, crm_links.c.subject_id).where(
                    crm_links.c.connector == "sf",
                    crm_links.c.object_type == "Individual",
                    one_of(conn, crm_links.c.record_id, ids),
                )
            )
            return {row.record_id: row.subject_id for row in rows}

        def ledger(conn: Connection) -> dict[str, int]:
            equal = (("connector", "sf"), ("object_type", "Individual"))
            return dict(
                select_in(conn, crm_links, ("record_id", "subject_id"), "record_id", ids, equal=equal)
            )

        with engine.connect() as conn:
            expected = floor(conn)
            assert len(expected) == args.ids and peer(conn) == expected and ledger(conn) == expected
            took: dict[str, float] = {}
            for name, lookup in (("floor", floor), ("peer", peer), ("ledger", ledger)) * 2:
                took[name] = min(took.get(name, float("inf")), _timed(lookup, conn, args.repeat))
        raw.close()
        engine.dispose()
    for name, seconds in took.items():
        print(f"{name:7} {seconds * 1000:7.2f} ms a lookup of {args.ids:,} ids among {args.links:,} links")
    print(f"ledger / floor (time)  {took['ledger'] / took['floor']:.2f}x")
    print(f"ledger / peer (time)   {took['ledger'] / took['peer']:.2f}x")


def _timed(lookup: Callable[[Connection], Any], conn: Connection, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        lookup(conn)
    return (time.perf_counter() - started) / repeat


if __name__ == "__main__":
    main()
