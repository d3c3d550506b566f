"""Sync runs as the ledger keeps them (sync_runs): their counts, a run that never started,
runs whose process died, and the past runs for `consentsync runs list|show` and the ops console."""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, select, update

from consentsync import audit
from consentsync.domain import InvalidInput, as_utc, canonical_json
from consentsync.ledger.schema import quarantine, sync_runs
from consentsync.rowview import RowView
from consentsync.sync import quarantine as quarantined
from consentsync.sync.decisions import PUSH_HELD_ACTION

# What a run's row can say it ended as (or is doing): the one list the CLI's, the console's and
# the API's filters accept. Not "dry_run": a dry run changes nothing, and leaves no row either.
RUN_STATUSES = ("running", "succeeded", "failed", "crashed", "stopped", "held", "skipped")


@dataclass(slots=True)
class RunCounts:
    """What a run did, as its row keeps it (sync_runs.counts): the engine counts into one as it
    goes; a run that never started keeps the zero counts."""

    read: int = 0
    quarantined: int = 0
    evidence_recorded: int = 0
    evidence_duplicates: int = 0
    unchanged_records: int = 0
    deleted_records: int = 0  # records the CRM deleted or merged away (their links marked gone)
    echoes_recognised: int = 0  # pushes whose lost answer was recovered by reading the value back
    pushes_held: int = 0  # pending pushes not sent: observe mode, or the blast-radius guard
    # Writes the CRM could never undo, left out for want of an evidenced withdrawal, objection
    # or erasure (consent merely absent).
    irreversible_held: int = 0
    # What the held pushes would write, per object, field and new value (the adoption report).
    would_push: list[dict[str, Any]] = field(default_factory=list)
    state_changes: int = 0
    subjects_created: int = 0
    # Consents whose validity had ended, recorded expired by the run before it decided its pushes
    # (``Ledger.expire_due``; a dry run's: the expiries it would record).
    expired: int = 0
    pushes_enqueued: int = 0
    # Examined batches whose pushes a second process decided (sync/ahead.py), and those it decided
    # on what changed before the run wrote them: decided again by the run.
    decided_ahead: int = 0
    decided_again: int = 0
    pushed: int = 0
    push_failed: int = 0
    api_calls: int = 0
    # Runs in a row, this one the last, that stopped on their own budget (budget.per_run) without
    # headway while writes were owed (``SyncEngine._fail_if_stalled``): the second fails.
    stalled_runs: int = 0
    api_used: int | None = None
    api_limit: int | None = None


def run_filters(
    connector: str | None,
    status: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
    open_quarantine: bool = False,
) -> list[Any]:
    """The runs of ``connector`` that ended ``status``, started ``since`` <= t < ``until``; with
    ``open_quarantine``, only those still holding an unresolved quarantined record. One meaning
    of each filter for `runs list`, the console and the API."""
    where: list[Any] = []
    if connector:
        where.append(sync_runs.c.connector == connector)
    if status:
        where.append(sync_runs.c.status == status)
    if since is not None:
        where.append(sync_runs.c.started_at >= since)
    if until is not None:
        where.append(sync_runs.c.started_at < until)
    if open_quarantine:
        where.append(
            sync_runs.c.id.in_(select(quarantine.c.run_id).where(quarantine.c.resolved_at.is_(None)))
        )
    return where


def list_runs(
    engine: Engine, *, connector: str | None = None, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The latest ``limit`` runs, newest first, of ``connector`` that ended ``status``. (The
    console's paged, filtered list is ``console_queries.runs_page``.)"""
    query = (
        select(sync_runs)
        .where(*run_filters(connector, status))
        .order_by(sync_runs.c.started_at.desc(), sync_runs.c.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [run_view(row) for row in conn.execute(query)]


class AmbiguousRunId(InvalidInput):
    """A short run id that more than one run's id starts with."""


#: Fewer characters than this are no run id: a prefix as short matches too many runs to mean one.
MIN_PREFIX = 4


def resolve_run_id(conn: Connection, run_id: str) -> str | None:
    """The full id of the run ``run_id`` names: its whole id, or (like git) a unique prefix of at
    least :data:`MIN_PREFIX` characters. None when no run matches; ``AmbiguousRunId`` when
    several do."""
    given = run_id.strip()
    if conn.execute(select(sync_runs.c.id).where(sync_runs.c.id == given)).first() is not None:
        return given
    wanted = given.lower()
    if len(wanted) < MIN_PREFIX or not _RUN_ID_TEXT.fullmatch(wanted):
        return None
    found = list(
        conn.execute(
            select(sync_runs.c.id).where(sync_runs.c.id.startswith(wanted, autoescape=True)).limit(6)
        ).scalars()
    )
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise AmbiguousRunId(f"run id {run_id!r} is ambiguous: it starts {shown}; give more characters")
    return found[0] if found else None


_RUN_ID_TEXT = re.compile(r"[0-9a-f-]+")


def show_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """One run by its id or a unique prefix of it (``resolve_run_id``); None when none matches."""
    with engine.connect() as conn:
        full = resolve_run_id(conn, run_id)
        if full is None:
            return None
        run_id = full
        row = conn.execute(select(sync_runs).where(sync_runs.c.id == run_id)).one_or_none()
        if row is None:
            return None
        held = conn.execute(
            select(quarantine).where(quarantine.c.run_id == run_id).order_by(quarantine.c.id)
        ).all()
        # What the run pushed, as its audit entries say (records by id, the fields' new values:
        # no address), and who approved the plan it applied: the run's own row keeps counts only.
        pushed = [
            {
                "object": entry["what"].get("object"),
                "record_id": entry["what"].get("record"),
                "action": entry["what"].get("action", "update"),
                "new": entry.get("new"),
                "rule": entry.get("rule"),
            }
            for entry in audit.entries(conn, run_id=run_id, action=PUSHED_ACTION, limit=PUSHES_SHOWN)
        ]
        applied = next(audit.entries(conn, run_id=run_id, action=PLAN_APPLIED_ACTION, limit=1), None)
        kept_back = [
            {
                "object": entry["what"].get("object"),
                "record_id": entry["what"].get("record"),
                "fields": entry["what"].get("fields"),
                "rule": entry.get("rule"),
            }
            for entry in audit.entries(conn, run_id=run_id, action=PUSH_HELD_ACTION, limit=PUSHES_SHOWN)
        ]
    view = run_view(row)
    view["quarantined_records"] = [quarantined.view(q) for q in held]
    view["pushes"] = pushed
    view["irreversible_held_records"] = kept_back
    view["plan_approved_by"] = applied.get("actor") if applied is not None else None
    return view


# The run's pushes listed by ``show_run``, at most (its counts say how many in all).
PUSHES_SHOWN = 500
PUSHED_ACTION = "crm.pushed"
PLAN_APPLIED_ACTION = "plan.applied"


_RUN_COLUMNS = RowView("id connector status full=full_load started_at finished_at")


def run_view(row: Any) -> dict[str, Any]:
    return {**_RUN_COLUMNS(row), "counts": orjson.loads(row.counts), "error": row.error}


def record_unstarted(
    engine: Engine, connector: str, error: str, now: datetime, *, status: str = "failed", kind: str = "config"
) -> str:
    """A run that failed before it could start (a configuration error, a missing secret or
    mapping file, a connector that cannot be built), or was skipped (another process holds the
    connector): recorded with its reason, so that `status`, `runs list`, the console and
    `/metrics` show it as they show any other run."""
    run_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(
                id=run_id,
                connector=connector[:64],
                started_at=now,
                finished_at=now,
                status=status,
                full_load=False,
                counts=canonical_json(asdict(RunCounts())),
                error=f"{kind}: {error}",
            )
        )
    return run_id


def settle_crashed(engine: Engine, now: datetime) -> list[str]:
    """Runs still marked "running" whose process is gone, recorded as crashed; returns their ids.

    A run holds its connector's lease from before its row is written until it ends: a running
    row whose lease another run has since taken, whose lease expired (its heartbeat stopped), or
    whose holder is a process of this host that no longer exists, is not running any more."""
    from consentsync.ledger.schema import connector_leases
    from consentsync.sync.lease import crashed_recorded, holder_dead

    query = select(
        sync_runs.c.id,
        sync_runs.c.connector,
        connector_leases.c.run_id,
        connector_leases.c.holder,
        connector_leases.c.expires_at,
    ).select_from(
        sync_runs.outerjoin(connector_leases, connector_leases.c.connector == sync_runs.c.connector)
    )
    crashed: dict[str, str] = {}
    connectors: dict[str, str] = {}
    settled: list[tuple[str, str]] = []
    with engine.begin() as conn:
        running = conn.execute(query.where(sync_runs.c.status == "running"))
        for run_id, connector, lease_run, holder, expires in running:
            connectors[run_id] = connector
            if lease_run is None:
                crashed[run_id] = "crashed: it holds no lease on its connector (its process is gone)"
            elif lease_run != run_id:
                crashed[run_id] = "crashed: another run took its connector over before it ended"
            elif holder_dead(holder):
                crashed[run_id] = "crashed: its process died before the run ended"
            elif as_utc(expires) <= now:
                crashed[run_id] = (
                    "crashed: its lease expired before the run ended (the process hung or lost the ledger)"
                )
        for run_id, reason in crashed.items():
            done = conn.execute(
                update(sync_runs)
                .where(sync_runs.c.id == run_id, sync_runs.c.status == "running")
                .values(status="crashed", finished_at=now, error=reason)
            ).rowcount
            if done == 1:  # not settled meanwhile by another process: this one records it
                settled.append((connectors[run_id], run_id))
    crashed_recorded(settled)
    return sorted(crashed)
