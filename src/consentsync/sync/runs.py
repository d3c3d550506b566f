"""Past sync runs, for `consentsync runs list|show` and the ops console."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, select

from consentsync.domain import iso
from consentsync.ledger.schema import quarantine, sync_runs


def list_runs(engine: Engine, *, connector: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    query = select(sync_runs).order_by(sync_runs.c.started_at.desc()).limit(limit)
    if connector:
        query = query.where(sync_runs.c.connector == connector)
    with engine.connect() as conn:
        return [_run_view(row) for row in conn.execute(query)]


def show_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(sync_runs).where(sync_runs.c.id == run_id)).one_or_none()
        if row is None:
            return None
        held = conn.execute(
            select(quarantine).where(quarantine.c.run_id == run_id).order_by(quarantine.c.id)
        ).all()
    view = _run_view(row)
    view["quarantined_records"] = [
        {
            "object": q.object_type,
            "record_id": q.record_id,
            "stage": q.stage,
            "reason": q.reason,
            "resolved_at": iso(q.resolved_at),
        }
        for q in held
    ]
    return view


def _run_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "connector": row.connector,
        "status": row.status,
        "full": row.full_load,
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "counts": orjson.loads(row.counts),
        "error": row.error,
    }
