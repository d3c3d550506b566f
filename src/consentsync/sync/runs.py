"""Past sync runs, for `consentsync runs list|show` and the ops console."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, func, insert, select

from consentsync.domain import iso
from consentsync.ledger.schema import quarantine, sync_runs
from consentsync.sync import quarantine as quarantined


def _filters(
    connector: str | None, status: str | None, since: datetime | None, until: datetime | None
) -> list[Any]:
    where: list[Any] = []
    if connector:
        where.append(sync_runs.c.connector == connector)
    if status:
        where.append(sync_runs.c.status == status)
    if since is not None:
        where.append(sync_runs.c.started_at >= since)
    if until is not None:
        where.append(sync_runs.c.started_at < until)
    return where


def list_runs(
    engine: Engine,
    *,
    connector: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Runs newest first, filtered by connector, result and start time (``since`` <= t < ``until``)."""
    query = (
        select(sync_runs)
        .where(*_filters(connector, status, since, until))
        .order_by(sync_runs.c.started_at.desc(), sync_runs.c.id)
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as conn:
        return [_run_view(row) for row in conn.execute(query)]


def count_runs(
    engine: Engine,
    *,
    connector: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    query = select(func.count()).select_from(sync_runs).where(*_filters(connector, status, since, until))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def show_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(sync_runs).where(sync_runs.c.id == run_id)).one_or_none()
        if row is None:
            return None
        held = conn.execute(
            select(quarantine).where(quarantine.c.run_id == run_id).order_by(quarantine.c.id)
        ).all()
    view = _run_view(row)
    view["quarantined_records"] = [quarantined.view(q) for q in held]
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


def record_unstarted(engine: Engine, connector: str, error: str, now: datetime) -> str:
    """A run that failed before it could start (a configuration error, a missing secret or
    mapping file, a connector that cannot be built): recorded as failed with its reason, so that
    `status`, `runs list`, the console and `/metrics` show it as they show any failed run."""
    import uuid
    from dataclasses import asdict

    from consentsync.domain import canonical_json
    from consentsync.sync.engine import RunCounts

    run_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(
                id=run_id,
                connector=connector[:64],
                started_at=now,
                finished_at=now,
                status="failed",
                full_load=False,
                counts=canonical_json(asdict(RunCounts())),
                error=f"config: {error}",
            )
        )
    return run_id
