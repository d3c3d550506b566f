"""The marker a record's snapshot carries when the people of other records point to it (an
Individual the Contacts of two addresses point to: sync/shared.py), and the reads of it. A module
of its own: the absorption (ledger/absorb.py) and the erasure (ledger/service.py) both read it."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import ColumnElement, Connection, func, literal_column, select

from consentsync.domain import canonical_json
from consentsync.ledger.bulk import one_of
from consentsync.ledger.schema import SHARED_SNAPSHOT_PREFIX, SNAPSHOT_IS_SHARED, crm_links, crm_snapshots

# The key of a record's snapshot fields naming the people whose records point to it, when it is
# another person's; a NUL first: no CRM field has that name, and canonical JSON writes it first,
# so a snapshot holding it is told by its text's start (``SHARED_PREFIX``).
SHARED_KEY = "\x00shared_with"
SHARED_PREFIX = canonical_json({SHARED_KEY: []})[:-3]


# The condition of the partial index of the snapshots that hold it (``ix_crm_snapshots_shared``,
# migration 0024; ``schema.SNAPSHOT_IS_SHARED``, the same start written out) as a query must write
# it: its function and literals, no bound parameter, so that SQLite's and PostgreSQL's planners
# (a generic plan of a prepared statement included) find the index's term in the query's.
def _is_shared(dialect: str) -> ColumnElement[bool]:
    start = SNAPSHOT_IS_SHARED[dialect].partition(" = ")[2]
    return func.substr(
        crm_snapshots.c.fields, literal_column("1"), literal_column(str(len(SHARED_SNAPSHOT_PREFIX)))
    ) == literal_column(start)


def sharing(fields: str | None) -> list[int]:
    """The people whose records point to the record whose snapshot's fields text this is (none
    for nearly every record: a prefix check)."""
    if fields is None or not fields.startswith(SHARED_PREFIX):
        return []
    return [int(person) for person in orjson.loads(fields).get(SHARED_KEY, ())]


def sharing_with(conn: Connection, people: Sequence[int]) -> set[int]:
    """The people whose records ``people``'s records point to and who keep their ids on the
    record's snapshot for it. For an erasure: the text of the few shared snapshots, read through
    their partial index (``ix_crm_snapshots_shared``, migration 0024), however many snapshots
    the ledger holds; then the people of the links among them that name one of ``people``."""
    if not people:
        return set()
    wanted = set(people)
    # Two reads, not a join: PostgreSQL, knowing nothing of how few snapshots the condition
    # holds, guesses a share of them (1,500 of 300,000) and joins by reading every link.
    links = [
        link_id
        for link_id, fields in conn.execute(
            select(crm_snapshots.c.link_id, crm_snapshots.c.fields).where(_is_shared(conn.dialect.name))
        )
        if wanted.intersection(sharing(fields))
    ]
    if not links:
        return set()
    return set(
        conn.execute(select(crm_links.c.subject_id).where(one_of(conn, crm_links.c.id, links))).scalars()
    )
