"""The marker a record's snapshot carries when the people of other records point to it (an
Individual the Contacts of two addresses point to: sync/shared.py), and the reads of it. A module
of its own: the absorption (ledger/absorb.py) and the erasure (ledger/service.py) both read it."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import Connection, select

from consentsync.domain import canonical_json
from consentsync.ledger.schema import crm_links, crm_snapshots

# The key of a record's snapshot fields naming the people whose records point to it, when it is
# another person's; a NUL first: no CRM field has that name, and canonical JSON writes it first,
# so a snapshot holding it is told by its text's start (``SHARED_PREFIX``).
SHARED_KEY = "\x00shared_with"
SHARED_PREFIX = canonical_json({SHARED_KEY: []})[:-3]


def sharing(fields: str | None) -> list[int]:
    """The people whose records point to the record whose snapshot's fields text this is (none
    for nearly every record: a prefix check)."""
    if fields is None or not fields.startswith(SHARED_PREFIX):
        return []
    return [int(person) for person in orjson.loads(fields).get(SHARED_KEY, ())]


def sharing_with(conn: Connection, people: Sequence[int]) -> set[int]:
    """The people whose records ``people``'s records point to and who keep their ids on the
    record's snapshot for it. Found by the snapshot's text's start: one scan of the snapshots,
    for an erasure only (rare), reading the text of the few shared ones."""
    if not people:
        return set()
    wanted = set(people)
    return {
        subject_id
        for subject_id, fields in conn.execute(
            select(crm_links.c.subject_id, crm_snapshots.c.fields)
            .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
            .where(crm_snapshots.c.fields.startswith(SHARED_PREFIX, autoescape=True))
        )
        if wanted.intersection(sharing(fields))
    }
