"""`consentsync status`: per connector, what ops need to see at a glance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, exists, func, or_, select

from consentsync.config import Config, ConfigError
from consentsync.domain import as_utc, iso
from consentsync.ledger.schema import crm_links, outbox, quarantine, subjects, sync_runs
from consentsync.sync.daemon import trigger_for


def connector_problems(config: Config, name: str) -> list[str]:
    """What keeps connector ``name`` from running, as one-line messages: a vendor that is not
    installed, a mapping file missing or invalid (checked without calling the CRM)."""
    from consentsync.domain import InvalidInput
    from consentsync.mapping import load_mapping

    settings = config.connector(name)
    problems: list[str] = []
    try:
        config.check_vendor(name)
    except ConfigError as error:  # file:line: connectors[N].vendor: ... installed are ...
        problems.append(str(error))
    for path in settings.mappings:
        try:
            load_mapping(config.resolve_path(path), purposes=config.purposes, channels=set(config.channels))
        except InvalidInput as error:
            problems.append(str(error))
    return problems


def connector_status(config: Config, engine: Engine, *, late_after: timedelta) -> list[dict[str, Any]]:
    """Per configured connector: problems, last run, next run (only while a daemon runs), the
    outbox, quarantine, API budget and alerts. Runs left "running" by a dead process are recorded
    as crashed first."""
    from consentsync.observability import late_suppressions
    from consentsync.sync.heartbeat import running_daemons
    from consentsync.sync.runs import settle_crashed

    now = datetime.now(UTC)
    settle_crashed(engine, now)
    daemons = running_daemons(engine, now)
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

            upcoming = None
            if daemons:  # a next run only when a daemon will make it
                upcoming = _next_run(settings.schedule, last, now)
            budget, reached = _last_budget(conn, name)
            success, failing = _track_record(conn, name)
            rows.append(
                {
                    "connector": name,
                    "vendor": settings.vendor,
                    "mode": settings.mode,
                    # Why no run pushes what waits in the outbox (erasures included) until an
                    # admin applies a plan: the connector observes, or its last run was held by
                    # the push guard. None: the next run pushes it.
                    "pushes_wait_for": _pushes_wait_for(settings.mode, last),
                    "problems": connector_problems(config, name),
                    "daemon": [{"holder": d.holder, "since": iso(d.started_at)} for d in daemons],
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
                    "last_success": success,
                    "failing": failing,
                    "next_run": iso(upcoming),
                    "outbox_pending": count(outbox, outbox.c.connector == name, outbox.c.status == "pending"),
                    "dead_letters": count(outbox, outbox.c.connector == name, outbox.c.status == "dead"),
                    "dead_suppressions": count(
                        outbox,
                        outbox.c.connector == name,
                        outbox.c.status == "dead",
                        outbox.c.suppression.is_(True),
                    ),
                    "quarantined_open": count(
                        quarantine, quarantine.c.connector == name, quarantine.c.resolved_at.is_(None)
                    ),
                    "api_budget_left": budget["left"] if budget else None,
                    "api_budget": budget,
                    # Why there is no budget to show: no run has reached the CRM yet (before the
                    # first run, or only runs that failed before their first call), or the CRM
                    # does not say.
                    "api_budget_status": _budget_status(budget, reached),
                    "late_suppressions": [row for row in late if row["connector"] == name],
                    "erasures_pending": _erasures_pending(conn, name),
                }
            )
    return rows


def _pushes_wait_for(mode: str, last: Any) -> str | None:
    """``plan`` when no scheduled run pushes this connector's outbox: it observes (a run pushes
    nothing, whatever waits: an erasure, a withdrawal), or its last run was held by the push
    guard (the next is held the same way while as much waits). Only an approved plan (`consentsync
    apply`, the console's plans page), or another mode, sends them. None: the next run does."""
    if mode == "observe" or (last is not None and last.status == "held"):
        return "plan"
    return None


def _next_run(schedule: Any, last: Any, now: datetime) -> datetime | None:
    """When the daemon runs the connector next: the schedule's next time after the last run's
    start, passing over the times its schedule came round while that run was in hand (one run of
    a connector at a time: the daemon skips them). While the run goes on, that is the first time
    after now; once it ended, the first time after it ended. Counted from the start alone, a run
    longer than the interval showed a next run in the past, and the console called the connector
    overdue while its run was busy, and again for up to an interval after it ended."""
    trigger = trigger_for(schedule)
    previous = as_utc(last.started_at) if last else None
    upcoming = trigger.get_next_fire_time(previous, now)
    if last is None:
        return upcoming
    busy_until = now if last.status == "running" or last.finished_at is None else as_utc(last.finished_at)
    for _ in range(100_000):  # an interval of 10 s over 11 days; a stale row never loops for ever
        if upcoming is None or upcoming > busy_until:
            break
        upcoming = trigger.get_next_fire_time(upcoming, now)
    return upcoming


def _track_record(conn: Connection, connector: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The connector's last successful run ({id, started_at, finished_at}, None when it never
    succeeded) and, when its latest finished runs failed or crashed, since when and how many in
    a row ({since, runs, first_run, last_success_at}; None when the last finished run did not
    fail). Runs in progress, skipped runs and dry runs say nothing either way and are passed
    over, as /readyz and the metrics pass them over."""
    from consentsync.observability import FAILED_STATUSES, NOT_A_VERDICT

    success = conn.execute(
        select(sync_runs.c.id, sync_runs.c.started_at, sync_runs.c.finished_at)
        .where(sync_runs.c.connector == connector, sync_runs.c.status == "succeeded")
        .order_by(sync_runs.c.started_at.desc(), sync_runs.c.id.desc())
        .limit(1)
    ).first()
    last_success = (
        {"id": success.id, "started_at": iso(success.started_at), "finished_at": iso(success.finished_at)}
        if success
        else None
    )
    streak = select(sync_runs.c.id, sync_runs.c.status, sync_runs.c.started_at).where(
        sync_runs.c.connector == connector, sync_runs.c.status.not_in(NOT_A_VERDICT)
    )
    if success is not None:  # the streak cannot reach past the last success
        streak = streak.where(sync_runs.c.started_at >= success.started_at)
    runs = 0
    first: Any = None
    for row in conn.execute(streak.order_by(sync_runs.c.started_at.desc(), sync_runs.c.id.desc())):
        if row.status not in FAILED_STATUSES:
            break
        runs += 1
        first = row
    failing = (
        {
            "since": iso(first.started_at),
            "runs": runs,
            "first_run": first.id,
            "last_success_at": last_success["finished_at"] if last_success else None,
        }
        if runs
        else None
    )
    return last_success, failing


def _budget_status(budget: dict[str, Any] | None, reached: bool) -> str:
    if budget:
        return "reported"
    return "not_reported" if reached else "no_run_yet"


def _last_budget(conn: Connection, connector: str) -> tuple[dict[str, Any] | None, bool]:
    """The API budget the CRM last reported (its limit and what was used, as of that run), None
    when it reported none; and whether any of those runs reached the CRM (made an API call):
    before the first one, the budget is not known yet, not "not reported by this CRM". Runs that
    never reached the CRM are passed over."""
    recent = conn.execute(
        select(sync_runs.c.started_at, sync_runs.c.counts)
        .where(sync_runs.c.connector == connector, sync_runs.c.status.not_in(("skipped", "running")))
        .order_by(sync_runs.c.started_at.desc())
        .limit(20)
    )
    reached = False
    for started_at, text in recent:
        counts = orjson.loads(text)
        reached = reached or bool(counts.get("api_calls"))
        if counts.get("api_limit") and counts.get("api_used") is not None:
            limit, used = int(counts["api_limit"]), int(counts["api_used"])
            budget = {"limit": limit, "used": used, "left": max(0, limit - used), "as_of": iso(started_at)}
            return budget, True
    return None, reached


def _erasures_pending(conn: Connection, connector: str) -> int:
    """People erased whose erasure has not yet reached this CRM (Art. 17(2)): they have a live
    record there, and either a push for them is pending, or no run of the connector has finished
    since the erasure."""
    last_success = (
        select(func.max(sync_runs.c.started_at))
        .where(sync_runs.c.connector == connector, sync_runs.c.status == "succeeded")
        .scalar_subquery()
    )
    pending_push = exists().where(
        outbox.c.connector == connector, outbox.c.subject_id == subjects.c.id, outbox.c.status == "pending"
    )
    query = (
        select(func.count(func.distinct(subjects.c.id)))
        .select_from(subjects.join(crm_links, crm_links.c.subject_id == subjects.c.id))
        .where(
            subjects.c.erased_at.is_not(None),
            crm_links.c.connector == connector,
            crm_links.c.gone_at.is_(None),
            or_(pending_push, last_success.is_(None), and_(subjects.c.erased_at > last_success)),
        )
    )
    return int(conn.execute(query).scalar_one())
