"""Retrying a quarantined record, from the console or the command line.

A record quarantined on reading (it did not translate or identify) is marked for re-reading: the
next run of its connector fetches it again by id and sends it through the normal flow without
moving the cursor (moving the cursor back would re-read everything after it). A record quarantined
on pushing (the CRM kept refusing the write) has its dead-lettered outbox rows put back in the
queue. Either way the request is an audit entry naming who asked.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import InvalidInput, iso
from consentsync.ledger.schema import outbox, quarantine
from consentsync.ledger.service import NotFound
from consentsync.rowview import RowView


class QuarantineNotFound(NotFound):
    """No quarantined record has that id."""


#: A quarantined record as the command line, the console and the API show it.
view = RowView(
    "id run_id connector object=object_type record_id stage reason created_at resolved_at"
    " retry_requested_at retry_requested_by"
)


def get(engine: Engine, quarantine_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(quarantine).where(quarantine.c.id == quarantine_id)).first()
    if row is None:
        raise QuarantineNotFound(f"no quarantined record with id {quarantine_id}")
    return view(row)


def retry(
    engine: Engine,
    quarantine_id: int,
    *,
    actor: str,
    now: datetime,
    can_reread: Callable[[str], bool],
) -> dict[str, Any]:
    """Queues the record again (see the module's doc); ``can_reread(connector)`` says whether
    that connector can fetch one record by id. Returns the row as it now is."""
    with engine.begin() as conn:
        row = conn.execute(
            select(quarantine).where(quarantine.c.id == quarantine_id).with_for_update()
        ).first()
        if row is None:
            raise QuarantineNotFound(f"no quarantined record with id {quarantine_id}")
        if row.resolved_at is not None:
            raise InvalidInput(f"quarantined record {quarantine_id} was resolved at {iso(row.resolved_at)}")
        what = {
            "quarantine": row.id,
            "connector": row.connector,
            "object": row.object_type,
            "record": row.record_id,
            "stage": row.stage,
        }
        if row.stage == "push":
            dead = (
                conn.execute(
                    select(outbox.c.id).where(
                        outbox.c.connector == row.connector,
                        outbox.c.object_type == row.object_type,
                        outbox.c.record_id == row.record_id,
                        outbox.c.status == "dead",
                    )
                )
                .scalars()
                .all()
            )
            if dead:
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_(dead))
                    .values(status="pending", attempts=0, last_error=None)
                )
            # Resolved now: if the CRM refuses again, the push is quarantined again in that run.
            values: dict[str, Any] = {"resolved_at": now}
            old, new = "dead", "pending"
            what["outbox"] = list(dead)
        else:
            if row.retry_requested_at is not None:
                return view(row)  # already asked: the next run re-reads it once
            if not can_reread(row.connector):
                raise InvalidInput(
                    f"connector {row.connector!r} cannot re-read one record by id: run "
                    f"'consentsync sync {row.connector} --full' to read it again"
                )
            values, old, new = {}, "quarantined", "reread_requested"
        conn.execute(
            update(quarantine)
            .where(quarantine.c.id == row.id)
            .values(retry_requested_at=now, retry_requested_by=actor, **values)
        )
        audit.append(
            conn,
            [AuditRecord("quarantine.retried", what, old=old, new=new, source="ops", actor=actor)],
            now,
        )
        updated = conn.execute(select(quarantine).where(quarantine.c.id == row.id)).one()
    return view(updated)
