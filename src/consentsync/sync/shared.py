"""Records two people share, and the records an erasure's delete or anonymise does not reach.

**A record another person's records point to** (docs/policy.md, "A person known only through
records without an address"). One Salesforce Individual that a Contact showing kim.work@ and a
Contact showing kim.home@ both point to (one human's work and home address; a Lead and a Contact)
ties two people the ledger keeps apart: each Contact is its address's holder's, and the Individual
is neither's alone. What the Individual says no to (its Don't Solicit, its consent records) is
said for everyone whose records point to it, so the nos of its person reach each of them, as a
merge's survivor takes on the nos of the person merged (``SyncEngine._carry_the_nos``): when the
pointing record is read, and whenever the Individual's person is examined afterwards (a no ticked
on the Individual later). Only nos travel, and only that way.

The people whose records point to it are kept on the shared record's own snapshot, under a key
no CRM field can have (``SHARED_KEY``: a NUL first), so that the examination of its person, which
reads its links' snapshots anyway, finds them without a lookup, and a record nobody shares costs
nothing: its snapshot's text does not start with the key. Written only when a page's record points
to another person's record (rare); carried over whenever the shared record's snapshot is written
again (``keep``).

**An erasure's delete or anonymise reaches only the records that speak for the person**
(docs/policy.md, Art. 17(2) erasure actions). Two kinds of record linked to the erased person do
not, and get the erasure's suppression only (the address they show is on the suppression list, or
their person is erased: nothing may be sent to them), never the configured delete or anonymise,
which would destroy another person's data; the outbox row and the ``crm.push_held`` entry name
the reason (``ADDRESS_LEFT_RULE``, ``SHARED_RULE``):

- a record linked to them only through an address they had left (the recycled mailbox's new
  owner's contact: linked by that address after their own record moved off it, showing it, not
  pointing to a record of theirs), as ``SyncEngine._through_left`` weighs a read. The addresses
  left and when are read from the chain (``subject.identifier_left``, ``subject.identifier_held_again``:
  the erasure deleted the rows), only for the erased people whose records an action would reach;
- a record shared with another person (above): their records point to it, while one of them is
  not erased, whether or not a record of theirs is still live (a deletion may be undone; their
  data in the shared record is theirs until they are erased). Once none is, the record holds
  nobody's data but the erased people's and the action reaches it, also where its own person is
  known by it alone (an Individual read through two people's Contacts on one page:
  ``SyncEngine._erased_sharers_reach``). So an erasure has every connector examine the people
  holding records shared with the erased (``Ledger.erase``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update

from consentsync.domain import canonical_json
from consentsync.ledger.bulk import one_of, select_in
from consentsync.ledger.identity import CrmLink, moved_linked
from consentsync.ledger.schema import crm_links, crm_snapshots
from consentsync.ledger.shared_marker import SHARED_KEY, SHARED_PREFIX
from consentsync.ledger.shared_marker import sharing as sharing  # used as shared.sharing
from consentsync.mapping import Mapping

# The snapshot key holding the ids of the people whose records point to the record (sorted), and
# how a snapshot's fields text starts where it is there (canonical JSON sorts it first).
PREFIX = SHARED_PREFIX
# The outbox's and the held entry's rule where an erasure's delete or anonymise is not sent.
ADDRESS_LEFT_RULE = "erasure_suppress_only_address_left"
SHARED_RULE = "erasure_suppress_only_shared_record"


def keep(stored: dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as read, with the sharing people of the snapshot ``stored`` (its fields)
    carried over: a read of the shared record does not forget who points to it."""
    if stored is not None and SHARED_KEY in stored:
        fields[SHARED_KEY] = stored[SHARED_KEY]
    return fields


def same_fields(stored: str | None, read: str) -> bool:
    """Whether a snapshot's fields text holds what was read (``read``, canonical JSON of the
    consent fields), the sharing people aside: parsed only for a marked snapshot that differs."""
    if stored == read:
        return True
    if stored is None or not stored.startswith(PREFIX):
        return False
    values = orjson.loads(stored)
    values.pop(SHARED_KEY, None)
    return canonical_json(values) == read


def mark(conn: Connection, connector: str, shared: dict[CrmLink, set[int]], now: datetime) -> int:
    """Adds to each record of ``shared`` (links of ``connector``, all linked) the people whose
    records point to it; a record not read yet gets a snapshot holding only them (its first read
    finds everything it says new, as without one). Returns how many snapshots changed. Rare: only
    a page with a record pointing to another person's record calls it."""
    changed = 0
    by_object: dict[str, dict[str, set[int]]] = {}
    for link, people in shared.items():
        by_object.setdefault(link.object_type, {})[link.record_id] = people
    for object_type, wanted in sorted(by_object.items()):
        rows = list(
            select_in(
                conn,
                crm_links,
                ("id", "record_id", "crm_snapshots.fields"),
                "record_id",
                sorted(wanted),
                equal=(("connector", connector), ("object_type", object_type)),
                join=((crm_snapshots, "link_id", "id"),),
            )
        )
        for link_id, record_id, fields in rows:
            people = wanted[record_id]
            if fields is None:
                conn.execute(
                    insert(crm_snapshots).values(
                        link_id=link_id,
                        evidence="{}",
                        fields=canonical_json({SHARED_KEY: sorted(people)}),
                        updated_at=now,
                    )
                )
                changed += 1
                continue
            values = orjson.loads(fields)
            have = {int(person) for person in values.get(SHARED_KEY, ())}
            if people <= have:
                continue
            values[SHARED_KEY] = sorted(have | people)
            conn.execute(
                update(crm_snapshots)
                .where(crm_snapshots.c.link_id == link_id)
                .values(fields=canonical_json(values))
            )
            changed += 1
    return changed


def left_addresses(conn: Connection, people: Iterable[int]) -> dict[int, dict[str, datetime]]:
    """For erased people, each address they had left at their erasure (its keyed hash, as the
    snapshots keep addresses) and the latest a record may have been linked to them to be theirs
    from before they left it: when the record whose move left it was linked
    (``identity.moved_linked``; a record linked after it by that address alone, the new owner's
    contact made before or after the move, is theirs only through it). From the chain: the
    erasure deleted the ``subject_identifiers`` rows, not the entries that bound ``left_at`` (one
    read by the subject index, for the few erased people whose records an action would reach, and
    one for the moved records' links)."""
    return moved_linked(conn, people)


def linked_through_left(
    conn: Connection,
    candidates: Sequence[Any],
    by_object: dict[str, Mapping],
    theirs: dict[int, set[tuple[str, str]]],
) -> set[int]:
    """Of ``candidates`` (an erased person's links an erasure's delete or anonymise would reach:
    ``_LinkToPush`` rows with their snapshot's fields), the link ids of the records linked to them
    only through an address they had left: last read showing it, linked after they left it, and
    not pointing to a record of theirs (``theirs``: each person's records, as (object, id)). Two
    reads (the links' times and addresses; the chain's entries of their people), only where an
    erased person with such an action configured is examined."""
    if not candidates:
        return set()
    left = left_addresses(conn, {row.subject_id for row in candidates})
    if not any(left.values()):
        return set()
    shown = {
        link_id: (linked_at, identity)
        for link_id, linked_at, identity in conn.execute(
            select(crm_links.c.id, crm_links.c.linked_at, crm_snapshots.c.identity)
            .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
            .where(one_of(conn, crm_links.c.id, sorted({row.id for row in candidates})))
        )
    }
    found: set[int] = set()
    for row in candidates:
        linked_at, identity = shown.get(row.id, (None, None))
        bound = left.get(row.subject_id, {}).get(identity) if identity is not None else None
        if bound is None or linked_at is None or linked_at <= bound:
            continue
        mapping = by_object[row.object_type]
        known = orjson.loads(row.fields) if row.fields else {}
        points = {
            (link.object, str(known[link.field]))
            for link in mapping.spec.identity.links
            if known.get(link.field) not in (None, "")
        }
        if points & theirs.get(row.subject_id, set()):
            continue  # it points to a record of theirs: it speaks for them (an Individual)
        found.add(row.id)
    return found
