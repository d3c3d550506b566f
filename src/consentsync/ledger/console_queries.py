"""Read-only questions the ops console asks of the ledger, beyond the services' own: runs with their
open quarantined records, a run's quarantined records one page at a time (with the run that
re-read each retried one), the records a run re-read, and the values the audit trail's filters can
take. Nothing here writes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Connection, Engine, and_, case, cast, func, or_, select, tuple_, type_coerce
from sqlalchemy.dialects.postgresql import JSONB

from consentsync.domain import as_utc, iso
from consentsync.ledger.engine import is_postgres, reading
from consentsync.ledger.schema import (
    STATE_IS_REQUESTED,
    audit_entries,
    consent_states,
    quarantine,
    subject_identifiers,
    subjects,
    sync_runs,
)
from consentsync.sync.quarantine import view as quarantine_view

# The run list's own filters and row view, shared with `runs list`: one meaning of each filter.
from consentsync.sync.runs import run_filters, run_view

if TYPE_CHECKING:
    from consentsync.ledger.service import Ledger


def runs_page(
    engine: Engine,
    *,
    connector: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    open_quarantine: bool = False,
    limit: int = 25,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int, int]:
    """(runs newest first, how many match, how many open quarantined records they hold): each run
    with its duration and its open quarantined records; ``open_quarantine`` keeps only the runs
    that still hold one."""
    where = run_filters(connector, status, since, until, open_quarantine)
    with reading(engine) as conn:
        rows = conn.execute(
            select(sync_runs)
            .where(*where)
            .order_by(sync_runs.c.started_at.desc(), sync_runs.c.id)
            .limit(limit)
            .offset(offset)
        ).all()
        total = int(conn.execute(select(func.count()).select_from(sync_runs).where(*where)).scalar_one())
        held = conn.execute(
            select(func.count())
            .select_from(quarantine)
            .where(
                quarantine.c.resolved_at.is_(None),
                quarantine.c.run_id.in_(select(sync_runs.c.id).where(*where)),
            )
        ).scalar_one()
        open_by_run = _open_counts(conn, [row.id for row in rows])
    return [_run(row, open_by_run.get(row.id, 0)) for row in rows], total, int(held)


def _open_counts(conn: Connection, run_ids: list[str]) -> dict[str, int]:
    if not run_ids:
        return {}
    query = (
        select(quarantine.c.run_id, func.count())
        .where(quarantine.c.run_id.in_(run_ids), quarantine.c.resolved_at.is_(None))
        .group_by(quarantine.c.run_id)
    )
    return {run_id: int(n) for run_id, n in conn.execute(query)}


def _run(row: Any, open_quarantined: int) -> dict[str, Any]:
    duration = (
        int((as_utc(row.finished_at) - as_utc(row.started_at)).total_seconds())
        if row.finished_at is not None
        else None
    )
    return {**run_view(row), "duration_seconds": duration, "quarantined_open": open_quarantined}


def _quarantine_filters(run_id: str, reason: str | None, state: str | None) -> list[Any]:
    where: list[Any] = [quarantine.c.run_id == run_id]
    if reason:
        where.append(quarantine.c.reason == reason)
    if state == "open":
        where.append(quarantine.c.resolved_at.is_(None))
    elif state == "resolved":
        where.append(quarantine.c.resolved_at.is_not(None))
    return where


def quarantine_page(
    engine: Engine,
    run_id: str,
    *,
    reason: str | None = None,
    state: str | None = None,
    limit: int = 25,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of a run's quarantined records (``reason``: exactly that reason; ``state``: open or
    resolved), how many match, and every reason of the run's records with how many are open
    and how many of those can be retried (not already waiting for a re-read). A
    retried record read again carries ``reread_by``: the run of its connector that re-read it."""
    where = _quarantine_filters(run_id, reason, state)
    with reading(engine) as conn:
        rows = conn.execute(
            select(quarantine).where(*where).order_by(quarantine.c.id).limit(limit).offset(offset)
        ).all()
        total = int(conn.execute(select(func.count()).select_from(quarantine).where(*where)).scalar_one())
        unresolved = quarantine.c.resolved_at.is_(None)
        retryable = and_(
            unresolved, or_(quarantine.c.stage == "push", quarantine.c.retry_requested_at.is_(None))
        )
        reasons = [
            {"reason": text, "records": int(n), "open": int(still or 0), "retryable": int(ready or 0)}
            for text, n, still, ready in conn.execute(
                select(
                    quarantine.c.reason,
                    func.count(),
                    func.sum(case((unresolved, 1), else_=0)),
                    func.sum(case((retryable, 1), else_=0)),
                )
                .where(quarantine.c.run_id == run_id)
                .group_by(quarantine.c.reason)
                .order_by(func.count().desc(), quarantine.c.reason)
            )
        ]
        items = [quarantine_view(row) for row in rows]
        for item, row in zip(items, rows, strict=True):
            item["reread_by"] = (
                _run_at(conn, row.connector, row.resolved_at)
                if row.stage == "pull" and row.retry_requested_at is not None and row.resolved_at
                else None
            )
    return {"items": items, "total": total, "reasons": reasons}


def _run_at(conn: Connection, connector: str, moment: datetime) -> str | None:
    """The run of ``connector`` in progress at ``moment`` (the one that resolved a re-read)."""
    return conn.execute(
        select(sync_runs.c.id)
        .where(
            sync_runs.c.connector == connector,
            sync_runs.c.started_at <= moment,
            or_(sync_runs.c.finished_at.is_(None), sync_runs.c.finished_at >= moment),
        )
        .order_by(sync_runs.c.started_at.desc())
        .limit(1)
    ).scalar()


def open_quarantine_ids(engine: Engine, run_id: str, *, reason: str | None = None) -> list[int]:
    """The run's quarantined records not yet resolved nor already asked to be re-read (all, or
    those of one reason): what a bulk retry of the run takes up."""
    with reading(engine) as conn:
        return list(
            conn.execute(
                select(quarantine.c.id)
                .where(
                    *_quarantine_filters(run_id, reason, "open"),
                    or_(quarantine.c.stage == "push", quarantine.c.retry_requested_at.is_(None)),
                )
                .order_by(quarantine.c.id)
            ).scalars()
        )


def reread_in_run(engine: Engine, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The records ``run`` read again because ops retried them (quarantined on reading in an
    earlier run, resolved while this run ran), each saying whether this run quarantined it again."""
    started = datetime.fromisoformat(run["started_at"].replace("Z", "+00:00"))
    finished = run["finished_at"] and datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00"))
    window = [quarantine.c.resolved_at >= started]
    if finished:
        window.append(quarantine.c.resolved_at <= finished)
    with reading(engine) as conn:
        rows = conn.execute(
            select(quarantine)
            .where(
                quarantine.c.connector == run["connector"],
                quarantine.c.stage == "pull",
                quarantine.c.run_id != run["id"],
                quarantine.c.retry_requested_at.is_not(None),
                and_(*window),
            )
            .order_by(quarantine.c.id)
        ).all()
        again = {
            (object_type, record_id)
            for object_type, record_id in conn.execute(
                select(quarantine.c.object_type, quarantine.c.record_id).where(
                    quarantine.c.run_id == run["id"]
                )
            )
        }
    return [
        {**quarantine_view(row), "quarantined_again": (row.object_type, row.record_id) in again}
        for row in rows
    ]


def audit_choices(engine: Engine, *, after_seq: int = 0) -> dict[str, Any]:
    """The actions and rules the audit trail's entries after ``after_seq`` hold, and the connectors
    that ever ran, for the trail's filters; ``head`` is the last entry's number (to ask for only
    what came after it next time)."""
    with reading(engine) as conn:
        if conn.dialect.name == "postgresql":
            rule = cast(audit_entries.c.payload, JSONB)["rule"].astext
        else:
            rule = type_coerce(audit_entries.c.payload, JSON)["rule"].as_string()
        newer = audit_entries.c.seq > after_seq
        actions = set(conn.execute(select(audit_entries.c.action).where(newer).distinct()).scalars())
        rules = {r for r in conn.execute(select(rule).where(newer).distinct()).scalars() if r}
        connectors = set(conn.execute(select(sync_runs.c.connector).distinct()).scalars())
        head = conn.execute(select(func.max(audit_entries.c.seq))).scalar()
    return {
        "actions": actions,
        "rules": {str(r) for r in rules},
        "connectors": connectors,
        "head": int(head or 0),
    }


__all__ = [
    "audit_choices",
    "open_quarantine_ids",
    "quarantine_page",
    "requested_page",
    "reread_in_run",
    "runs_page",
]


# -- people to chase -------------------------------------------------------------------------------

# How many requested consents are checked against the policy at a time.
REQUESTED_BATCH = 500


def requested_page(
    ledger: Ledger, older_than_days: int, *, offset: int, limit: int, batch: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """(one page of the consents requested more than ``older_than_days`` ago and still
    unanswered, how many there are): the people ``Ledger.stale_requests`` names, in its order
    (oldest request first), each by uid alone, with no address.

    ``stale_requests`` reads every such request with each person's address, flags, objections
    and evidence at once, for the console to show 25 of them. Here the requests are walked
    ``batch`` at a time in the order of their index, each batch decided by the policy as the
    report decides it (``Ledger.effective_states_in``: a restriction, an erasure suppression or
    an objection keeps a person off the list however old the request), so that only the page's
    rows are kept; whether a request is chased is the policy's to say, not a copy of it in SQL,
    so the count needs every candidate decided. No address is read: the caller names each person
    as it may show them."""
    try:
        cutoff = ledger.clock() - timedelta(days=older_than_days)
    except OverflowError:
        return [], 0  # further back than the calendar goes: nothing is that old
    # Only the configured purposes and their channels are asked for (a request for one no
    # longer configured is not chased); the policy decides the rest.
    configured = [
        and_(consent_states.c.purpose == key, consent_states.c.channel.in_(sorted(purpose.channels)))
        for key, purpose in ledger.purposes.items()
        if purpose.channels
    ]
    if not configured:
        return [], 0
    order = (
        consent_states.c.since,
        consent_states.c.subject_id,
        consent_states.c.purpose,
        consent_states.c.channel,
    )
    query = (
        select(*order, subjects.c.uid)
        .join(subjects, subjects.c.id == consent_states.c.subject_id)
        .where(
            STATE_IS_REQUESTED,
            consent_states.c.since <= cutoff,
            subjects.c.erased_at.is_(None),
            subjects.c.restricted.is_(False),
            or_(*configured),
        )
        .order_by(*order)
        .limit(batch or REQUESTED_BATCH)
    )
    items: list[dict[str, Any]] = []
    total = 0
    with reading(ledger.engine) as conn:
        if is_postgres(ledger.engine):
            # One snapshot for the whole walk: a request answered between two batches must
            # neither be counted twice nor leave the count and the page disagreeing.
            conn.execution_options(isolation_level="REPEATABLE READ")
        last: tuple[Any, ...] | None = None
        while True:
            step = query if last is None else query.where(tuple_(*order) > tuple_(*last))
            rows = conn.execute(step).all()
            if not rows:
                break
            last = tuple(rows[-1][:4])
            # Decided as the report decides them (``Ledger.chaseable_in``: docs/policy.md rule 6).
            chased = ledger.chaseable_in(conn, [(row.subject_id, row.purpose, row.channel) for row in rows])
            for row in rows:
                if (row.subject_id, row.purpose, row.channel) not in chased:
                    continue
                if offset <= total < offset + limit:
                    items.append(
                        {
                            "subject": row.uid,
                            "subject_id": row.subject_id,
                            "purpose": row.purpose,
                            "channel": row.channel,
                            "requested_since": iso(row.since),
                        }
                    )
                total += 1
    return items, total


def emails_of(engine: Engine, subject_ids: list[int]) -> dict[int, str]:
    """Each person's address (one, if an older version left several), for the few rows a page
    shows."""
    if not subject_ids:
        return {}
    with reading(engine) as conn:
        rows = conn.execute(
            select(subject_identifiers.c.subject_id, func.min(subject_identifiers.c.value))
            .where(
                subject_identifiers.c.kind == "email",
                subject_identifiers.c.subject_id.in_(sorted(set(subject_ids))),
            )
            .group_by(subject_identifiers.c.subject_id)
        ).all()
    return {subject_id: value for subject_id, value in rows}


# -- the outbox --------------------------------------------------------------------------------------

OUTBOX_STATES = ("pending", "dead")


def outbox_page(
    engine: Engine, connector: str, status: str, *, page: int, per_page: int
) -> tuple[list[dict[str, Any]], int]:
    """A connector's pushes waiting (``pending``) or given up (``dead``), oldest first: what the
    overview's Outbox and Dead letters numbers count. Field names only, never their values (an
    erasure's push may carry what it overwrites)."""
    import orjson

    from consentsync.ledger.schema import outbox

    where = [outbox.c.connector == connector, outbox.c.status == status]
    with reading(engine) as conn:
        total = conn.execute(select(func.count()).select_from(outbox).where(*where)).scalar_one()
        rows = conn.execute(
            select(outbox).where(*where).order_by(outbox.c.id).limit(per_page).offset((page - 1) * per_page)
        ).all()
    items = [
        {
            "id": row.id,
            "object_type": row.object_type,
            "record_id": row.record_id,
            "action": row.action,
            "fields": sorted(orjson.loads(row.fields)) if row.fields else [],
            "suppression": row.suppression,
            "rule": row.rule,
            "attempts": row.attempts,
            "last_error": row.last_error,
            "created_at": row.created_at,
            "run_id": row.run_id,
        }
        for row in rows
    ]
    return items, int(total)
