"""Where each connector's reads resume (``sync_cursors``), shown and moved by an admin:
``consentsync state show|reset``.

A reset moves one cursor back to the beginning (the next run reads the whole object again) or to a
time (the next run reads what changed after it). It is refused while a run holds the connector
(the run lock and the connector's lease, as a run takes them), and it is an audit entry naming who
moved which cursor from where to where. Re-reading is harmless: evidence and pushes are
idempotent, the engine compares each record with its snapshot.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, delete, func, select

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import InvalidInput, canonical_json, iso
from consentsync.ledger.bulk import db_time, upsert_rows
from consentsync.ledger.schema import state_changes, sync_cursors
from consentsync.sdk.connector import Cursor
from consentsync.sync.engine import LEDGER_FEED, READS_KEY, REREADING_KEY
from consentsync.sync.feed import FeedPlace
from consentsync.sync.lease import Lease
from consentsync.sync.locks import connector_lock
from consentsync.sync.push_rules import PUSH_RULES

LEDGER_FEED_LABEL = "(ledger feed)"
RESET_RUN_PREFIX = "state-reset"


def label(object_type: str) -> str:
    return LEDGER_FEED_LABEL if object_type == LEDGER_FEED else object_type


def stored_name(object_label: str) -> str:
    """The row name of what an admin typed: the ledger feed by its label or by its row name."""
    return LEDGER_FEED if object_label.strip() in (LEDGER_FEED_LABEL, "ledger", LEDGER_FEED) else object_label


def _position(object_type: str, stored: str) -> dict[str, Any]:
    if object_type == LEDGER_FEED:
        place = FeedPlace.from_json(stored)
        return {"state_change_id": place.last, "gaps": len(place.gaps)}
    return Cursor.from_json(orjson.loads(stored)).to_json()


def show(engine: Engine, connector: str, object_type: str | None = None) -> list[dict[str, Any]]:
    """The stored cursors of ``connector`` (of one object when given), the ledger feed last."""
    query = select(sync_cursors).where(
        sync_cursors.c.connector == connector,
        sync_cursors.c.object_type != PUSH_RULES,  # a digest of rules, not a place to move
    )
    if object_type is not None:
        query = query.where(sync_cursors.c.object_type == object_type)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    out = [
        {
            "connector": row.connector,
            "object": label(row.object_type),
            "position": _position(row.object_type, row.cursor),
            "run_id": row.run_id,
            "updated_at": iso(row.updated_at),
        }
        for row in rows
    ]
    out.sort(key=lambda r: (r["object"] == LEDGER_FEED_LABEL, r["object"]))
    return out


def reset(
    engine: Engine,
    connector: str,
    object_type: str,
    *,
    to: datetime | None,
    actor: str,
    clock: Callable[[], datetime],
) -> dict[str, Any]:
    """Moves one cursor (see the module's doc); returns what it was and what it is now."""
    with connector_lock(engine, connector):  # RunInProgress when a run holds it
        now = clock()
        lease = Lease(
            engine, connector, f"{RESET_RUN_PREFIX}-{uuid.uuid4().hex[:16]}", clock, ttl=timedelta(seconds=60)
        )
        lease.acquire()  # RunInProgress when a run on another host holds the lease
        try:
            with engine.begin() as conn:
                lease.check(conn)
                before = conn.execute(
                    select(sync_cursors.c.cursor).where(
                        sync_cursors.c.connector == connector, sync_cursors.c.object_type == object_type
                    )
                ).scalar()
                if object_type == LEDGER_FEED:
                    new = _feed_at(conn, to)
                else:
                    new = None if to is None else canonical_json(_placed(to, before))
                if new is None:
                    conn.execute(
                        delete(sync_cursors).where(
                            sync_cursors.c.connector == connector, sync_cursors.c.object_type == object_type
                        )
                    )
                else:
                    upsert_rows(
                        conn,
                        sync_cursors,
                        ("connector", "object_type", "cursor", "run_id", "updated_at"),
                        ("connector", "object_type"),
                        [(connector, object_type, new, lease.run_id[:36], db_time(conn, now))],
                    )
                old_view = _position(object_type, before) if before else None
                new_view = _position(object_type, new) if new else None
                what = {"connector": connector, "object": label(object_type), "to": iso(to) if to else None}
                audit.append(
                    conn,
                    [
                        AuditRecord(
                            "sync.cursor_reset", what, old=old_view, new=new_view, source="ops", actor=actor
                        )
                    ],
                    now,
                )
        finally:
            lease.release()
    return {"connector": connector, "object": label(object_type), "before": old_view, "after": new_view}


def _placed(to: datetime, before: str | None) -> dict[str, Any]:
    """The cursor a reset places at ``to``, keeping what the cursor it replaces recorded of the
    reading its records were read under (the digest of the mapping, ``SyncEngine._save_cursor``):
    a mapping changed since still has the object read from its start. Without it the engine
    honours the position as the admin chose it and never learns that the mapping changed before
    the reset: the records before ``to`` (a contact nobody edited since, holding a no under a
    field mapped anew) would keep what the old mapping made of them."""
    placed: dict[str, Any] = dict(Cursor(to, None).to_json())
    old = orjson.loads(before) if before else None
    if isinstance(old, dict) and old.get(READS_KEY) is not None:
        placed[READS_KEY] = old[READS_KEY]
        # What is read from ``to`` is taken whole, as before the digest was kept (an admin moves
        # a cursor back to have those records gone through again, not compared and skipped).
        placed[REREADING_KEY] = True
    return placed


def _feed_at(conn: Any, to: datetime | None) -> str | None:
    """The ledger feed's place just before ``to``: every state change recorded at or after it is
    examined again (None: from the first).

    The place is found from the first change stamped at or after ``to``, not from the last one
    stamped before it: ids follow the order of the inserts, stamps the clock of whoever recorded
    them, and the two disagree after a clock step back or between writers on hosts whose clocks
    differ. The last id stamped before ``to`` can then lie above changes stamped after it, which
    a place there would never examine again. Placed before the first, the changes between that
    are stamped earlier are examined once more, which is harmless (pushes are idempotent)."""
    if to is None:
        return None
    since = select(func.min(state_changes.c.id)).where(state_changes.c.created_at >= to)
    first = conn.execute(since).scalar()
    if first is None:  # nothing recorded since: the next run examines what is recorded from now on
        first = (conn.execute(select(func.max(state_changes.c.id))).scalar() or 0) + 1
    return FeedPlace(int(first) - 1).to_json()


def check_object(known: set[str], object_type: str, connector: str) -> None:
    """``object_type`` is one the connector's mappings read, or the ledger feed."""
    if object_type == LEDGER_FEED or object_type in known:
        return
    accepted = ", ".join([*sorted(known), LEDGER_FEED_LABEL])
    raise InvalidInput(f"connector {connector!r} reads no object {object_type!r}: accepted are {accepted}")
