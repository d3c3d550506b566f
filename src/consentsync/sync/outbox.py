"""The outbox as ops see it: what is waiting to reach a CRM, what was dead-lettered, and retrying."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import InvalidInput, iso
from consentsync.ledger.bulk import upsert_rows
from consentsync.ledger.schema import outbox, subjects, sync_examine


def list_rows(
    engine: Engine, *, dead: bool = False, connector: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    query = (
        select(outbox, subjects.c.uid)
        .join(subjects, subjects.c.id == outbox.c.subject_id)
        .where(outbox.c.status == ("dead" if dead else "pending"))
        .order_by(outbox.c.id)
        .limit(limit)
    )
    if connector:
        query = query.where(outbox.c.connector == connector)
    with engine.connect() as conn:
        return [
            {
                "id": row.id,
                "connector": row.connector,
                "object": row.object_type,
                "record_id": row.record_id,
                "subject": row.uid,
                "fields": orjson.loads(row.fields),
                "suppression": row.suppression,
                "rule": row.rule,
                "status": row.status,
                "attempts": row.attempts,
                "last_error": row.last_error,
                "created_at": iso(row.created_at),
            }
            for row in conn.execute(query)
        ]


def retry(engine: Engine, ids: list[int] | None, *, actor: str | None, now: datetime) -> int:
    """Puts dead-lettered rows (the given ids, or all) back in the queue for the next run, and
    their people up for examination: a row dead-lettered weeks ago says what was decided then
    (an opt-in, say), and a withdrawal since went out in a row of its own. Examined before the
    next run pushes, a row the person's state of now no longer asks for is superseded, never
    sent over the newer value."""
    with engine.begin() as conn:
        query = (
            select(
                outbox.c.id,
                outbox.c.connector,
                outbox.c.object_type,
                outbox.c.record_id,
                outbox.c.subject_id,
                subjects.c.uid,
            )
            .join(subjects, subjects.c.id == outbox.c.subject_id)
            .where(outbox.c.status == "dead")
        )
        if ids is not None:
            query = query.where(outbox.c.id.in_(ids))
        rows = conn.execute(query).all()
        if ids is not None and len(rows) != len(set(ids)):
            missing = sorted(set(ids) - {row.id for row in rows})
            raise InvalidInput(f"no dead-lettered outbox row with id {', '.join(map(str, missing))}")
        if not rows:
            return 0
        conn.execute(
            update(outbox)
            .where(outbox.c.id.in_([row.id for row in rows]))
            .values(status="pending", attempts=0, last_error=None)
        )
        examine = sorted({(row.connector, row.subject_id) for row in rows})
        upsert_rows(
            conn,
            sync_examine,
            ("connector", "subject_id"),
            ("connector", "subject_id"),
            examine,
            update=False,
        )
        audit.append(
            conn,
            [
                AuditRecord(
                    "outbox.retried",
                    {
                        "outbox": row.id,
                        "connector": row.connector,
                        "object": row.object_type,
                        "record": row.record_id,
                    },
                    old="dead",
                    new="pending",
                    source="ops",
                    actor=actor,
                    subject_uid=row.uid,
                )
                for row in rows
            ],
            now,
        )
        return len(rows)
