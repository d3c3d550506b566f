"""What a connector's push decisions depend on, and who is decided again when that changed.

A push is decided when its person is examined, then waits in the outbox until a run may send it
(a connector that observes, a run held by the push guard, a CRM that refused for now). It was
decided under the connector's mode, erasure actions and mappings of that moment, and waited as
it was: after an admin turned a field to ``direction: pull``, or switched ``observe`` to
``suppress_only`` (which never clears an opt-out), the next run still wrote what the old rules
had decided. So the rules' digest is kept beside the connector's cursors, and a run (or a plan)
that finds it changed examines again every person linked through the connector: a push the new
rules still make keeps its row, with its attempts; one they no longer make is superseded; and a
push the old rules never made is made now. Not only the waiting pushes: a grant that
``suppress_only`` never pushed is owed once the mode allows it, and a release that decides
otherwise (``PUSH_DECISIONS_VERSION``, its history beside it in mapping.py: 3 puts back what a
lifted restriction wrote, 7 writes no opt-out for a request nobody answered over nothing
else on record) owes its
decision to the people the older release examined and left as they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

import orjson
from sqlalchemy import Connection, literal, select, true, union
from sqlalchemy.dialects import postgresql, sqlite

from consentsync.domain import canonical_json
from consentsync.ledger.bulk import db_time, upsert_rows
from consentsync.ledger.schema import crm_links, outbox, sync_cursors, sync_examine
from consentsync.mapping import PUSH_DECISIONS_VERSION, Mapping

# The sync_cursors row that holds the digest ("~": no CRM object is named so; see LEDGER_FEED).
PUSH_RULES = "~push-rules"


class PushOptions(Protocol):
    """What of a run's options decides pushes (SyncOptions has it)."""

    mode: str
    erasure_actions: dict[str, str]


def push_rules_digest(mappings: Iterable[Mapping], options: PushOptions) -> str:
    """A digest of everything a push decision reads besides the ledger and the CRM record: the
    mode, the erasure actions and each mapping whole (a change to a mapping's reads alone
    re-examines the waiting people for nothing, which is cheap and never wrong)."""
    body = {
        # How the code decides (mapping.PUSH_DECISIONS_VERSION): a release that decides otherwise
        # from the same files has the waiting pushes decided again.
        "decisions": PUSH_DECISIONS_VERSION,
        "mode": options.mode,
        "erasure_actions": dict(options.erasure_actions),
        # personal_fields stay in: an erasure's anonymise writes them.
        "mappings": sorted(
            canonical_json(mapping.spec.model_dump(mode="json", warnings=False)) for mapping in mappings
        ),
    }
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def examine_under_new_rules(
    conn: Connection, connector: str, digest: str, run_id: str, now: datetime
) -> bool:
    """Marks for examination (``sync_examine``) every person linked through ``connector`` when
    the rules stored for it are not ``digest``, and stores ``digest`` as the rules of this run, in
    ``conn``; True when it did. A ledger that holds no digest yet (a first run, or one made by an
    older version) has its people decided again too: the rules they were decided under are not
    known. One statement: the people are never loaded (a million links cost one scan of the
    connector's links, once per change of rules; a mapping change reads every record anyway)."""
    stored = conn.execute(
        select(sync_cursors.c.cursor).where(
            sync_cursors.c.connector == connector, sync_cursors.c.object_type == PUSH_RULES
        )
    ).scalar()
    if stored is not None and orjson.loads(stored).get("digest") == digest:
        return False
    upsert_rows(
        conn,
        sync_cursors,
        ("connector", "object_type", "cursor", "run_id", "updated_at"),
        ("connector", "object_type"),
        [(connector, PUSH_RULES, orjson.dumps({"digest": digest}).decode(), run_id, db_time(conn, now))],
    )
    # The pushes waiting too, whatever their links became since (a record merged away).
    people = union(
        select(crm_links.c.subject_id).where(crm_links.c.connector == connector),
        select(outbox.c.subject_id).where(outbox.c.connector == connector, outbox.c.status == "pending"),
    ).subquery()
    # WHERE true: SQLite takes the ON of an INSERT ... SELECT ... ON CONFLICT for a join's
    # where the SELECT has no WHERE.
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        dialect_insert(sync_examine)
        .from_select(
            ["connector", "subject_id"], select(literal(connector), people.c.subject_id).where(true())
        )
        .on_conflict_do_nothing()
    )
    return True
