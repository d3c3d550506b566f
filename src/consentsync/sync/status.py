"""`consentsync status`: per connector, what ops need to see at a glance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from consentsync.config import Config
from consentsync.domain import iso
from consentsync.ledger.schema import outbox, quarantine, sync_runs
from consentsync.sync.daemon import trigger_for


def connector_status(config: Config, engine: Engine, *, late_after: timedelta) -> list[dict[str, Any]]:
    from consentsync.observability import late_suppressions

    now = datetime.now(UTC)
    late = late_suppressions(engine, late_after)
    rows: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for settings in config.settings.connectors:
            name = settings.name
            last = conn.execute(
                select(sync_runs)
                .where(sync_runs.c.connector == name)
                .order_by(sync_runs.c.started_at.desc())
                .limit(1)
            ).first()
            counts = orjson.loads(last.counts) if last else {}

            def count(table: Any, *where: Any) -> int:
                return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

            trigger = trigger_for(settings.schedule)
            previous = last.started_at if last else None
            upcoming = trigger.get_next_fire_time(previous, now)
            budget_left = None
            if counts.get("api_limit") and counts.get("api_used") is not None:
                budget_left = counts["api_limit"] - counts["api_used"]
            rows.append(
                {
                    "connector": name,
                    "vendor": settings.vendor,
                    "last_run": {
                        "id": last.id,
                        "status": last.status,
                        "started_at": iso(last.started_at),
                        "finished_at": iso(last.finished_at),
                        "read": counts.get("read"),
                        "ledger_changes": counts.get("state_changes"),
                        "pushed": counts.get("pushed"),
                        "error": last.error,
                    }
                    if last
                    else None,
                    "next_run": iso(upcoming),
                    "outbox_pending": count(outbox, outbox.c.connector == name, outbox.c.status == "pending"),
                    "dead_letters": count(outbox, outbox.c.connector == name, outbox.c.status == "dead"),
                    "quarantined_open": count(
                        quarantine, quarantine.c.connector == name, quarantine.c.resolved_at.is_(None)
                    ),
                    "api_budget_left": budget_left,
                    "late_suppressions": [row for row in late if row["connector"] == name],
                }
            )
    return rows
