"""What the console shows and does, in plain dicts: one facade over the core's services that the
HTML pages and the JSON API both call, so that the two cannot drift apart."""

from __future__ import annotations

import heapq
import itertools
import json
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from consentsync import audit
from consentsync.accounts import Account, Accounts
from consentsync.config import Config, ConfigError
from consentsync.domain import InvalidInput, ObjectionStatus, iso, lookup_email
from consentsync.ledger.console_queries import (
    OUTBOX_STATES,
    audit_choices,
    emails_of,
    open_quarantine_ids,
    outbox_page,
    quarantine_page,
    requested_page,
    reread_in_run,
    runs_page,
)
from consentsync.ledger.engine import is_postgres, reading
from consentsync.ledger.schema import (
    audit_details,
    audit_entries,
    audit_head,
    objections,
    subject_identifiers,
    subjects,
    sync_runs,
)
from consentsync.ledger.service import Ledger, NotFound
from consentsync.rowview import RowView
from consentsync.sdk.errors import is_secret_key, mask_secret_params, scrub
from consentsync.sync import quarantine
from consentsync.sync.plan import mask_email
from consentsync.sync.runs import RUN_STATUSES, list_runs, show_run
from consentsync.web.plans import PlanDesk

PER_PAGE = 25
QUARANTINE_STATES = ("open", "resolved")
EXPORT_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
# Names of settings whose values are secrets beyond the SDK's (``is_secret_key``).
_PRIVATE_KEY = re.compile(r"(?i)(^|_)key$")
# Credentials inside a value: a URL's user information, and query parameters that carry one.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]+@")
HIDDEN = "(hidden)"
# How late a connector's next run may be, while a daemon runs, before the overview says so.
OVERDUE_MARGIN = timedelta(minutes=5)
Reader = tuple[Account, str]  # who reads a person's record, and where from ("console", "api")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a long list, and enough to link to its neighbours."""

    items: list[dict[str, Any]]
    page: int
    per_page: int
    total: int
    summary: dict[str, Any] = field(default_factory=dict)  # facts about the whole filtered list

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def as_dict(self) -> dict[str, Any]:
        position = {"page": self.page, "per_page": self.per_page, "total": self.total, "pages": self.pages}
        return {"items": self.items, **position, **self.summary}


def _offset(page: int, per_page: int) -> int:
    return (max(1, page) - 1) * per_page


class Console:
    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.engine = ledger.engine
        self.accounts = Accounts(ledger.engine, clock=lambda: ledger.clock(), keyed=ledger.keyed_hasher())
        self.plans = PlanDesk(config, ledger)
        self._choices: dict[str, Any] = {"actions": set(), "rules": set(), "connectors": set(), "head": 0}
        self._choices_lock = threading.Lock()

    # -- overview ------------------------------------------------------------------------------

    def outbox(self, connector: str, status: str, *, page: int, per_page: int) -> Page:
        """A connector's pending pushes or dead letters (the overview's two numbers)."""
        if connector not in {c.name for c in self.config.settings.connectors}:
            raise NotFound(f"no connector named {connector!r}")  # a 404, not an empty list
        if status not in OUTBOX_STATES:
            raise InvalidInput(f"status {status!r}: accepted are {', '.join(OUTBOX_STATES)}")
        items, total = outbox_page(self.engine, connector, status, page=page, per_page=per_page)
        for item in items:
            # What the CRM answered may quote a credential the connector was given: scrubbed.
            item["last_error"] = scrub(item["last_error"]) if item["last_error"] else None
        return Page(items, page, per_page, total)

    def overview(self) -> dict[str, Any]:
        from consentsync.observability import failing_connectors
        from consentsync.sync.status import connector_status

        hours = self.config.settings.policy.late_suppression_hours
        rows = connector_status(self.config, self.engine, late_after=timedelta(hours=hours))
        now = datetime.now(UTC)
        for row in rows:
            succeeded = list_runs(self.engine, connector=row["connector"], status="succeeded", limit=1)
            row["last_success_at"] = succeeded[0]["started_at"] if succeeded else None
            # Lag: how old the newest change this connector surely holds may be (its last
            # successful run read everything up to the moment it started).
            row["lag_seconds"] = (
                int((now - _parse(succeeded[0]["started_at"])).total_seconds()) if succeeded else None
            )
        failing = failing_connectors(self.engine)
        alerts: list[dict[str, Any]] = [
            {
                "kind": "late_suppression",
                "connector": late["connector"],
                "message": f"suppression for {late['object']} {late['record_id']} waiting "
                f"{late['age_seconds'] / 3600:.1f} h (over {hours} h)",
            }
            for row in rows
            for late in row["late_suppressions"]
        ]
        last_run = {row["connector"]: (row["last_run"] or {}).get("id") for row in rows}
        alerts += [
            {
                "kind": "failing_connector",
                "connector": name,
                "message": f"{name}: its last runs all failed",
                "run": last_run.get(name),
            }
            for name in failing
        ]
        alerts += self._daemon_alerts(rows, now)
        alerts += self._held_pushes()
        pending = self.count_objections(pending_only=True)
        return {"connectors": rows, "alerts": alerts, "pending_objections": pending, "as_of": iso(now)}

    def _daemon_alerts(self, rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        """No daemon running (nothing runs on schedule), or, while one runs, a connector whose
        next run is more than ``OVERDUE_MARGIN`` late: each overdue one linked to its last run."""
        from consentsync.sync.heartbeat import running_daemons

        if not running_daemons(self.engine, now):
            return [
                {
                    "kind": "no_daemon",
                    "message": "no daemon running: no scheduled run will happen "
                    "(start one with consentsync run)",
                }
            ]
        alerts: list[dict[str, Any]] = []
        for row in rows:
            due = row["next_run"]
            if row["last_run"] and due and _parse(due) + OVERDUE_MARGIN < now:
                alerts.append(
                    {
                        "kind": "overdue",
                        "connector": row["connector"],
                        "message": f"{row['connector']}: its scheduled run is overdue",
                        "due": due,
                        "run": row["last_run"]["id"],
                    }
                )
        return alerts

    def _held_pushes(self) -> list[dict[str, Any]]:
        """Connectors whose last run was held by the push guard, or observed with pushes held:
        each with a link to its plans."""
        import orjson

        alerts: list[dict[str, Any]] = []
        with reading(self.engine) as conn:
            for item in self.config.settings.connectors:
                last = conn.execute(
                    select(sync_runs.c.id, sync_runs.c.status, sync_runs.c.counts, sync_runs.c.error)
                    .where(sync_runs.c.connector == item.name, sync_runs.c.status != "running")
                    .order_by(sync_runs.c.started_at.desc())
                    .limit(1)
                ).first()
                if last is None:
                    continue
                held = orjson.loads(last.counts).get("pushes_held") or 0
                link = f"/connectors/{item.name}/plans"
                if last.status == "held":
                    alerts.append(
                        {
                            "kind": "pushes_held",
                            "connector": item.name,
                            "message": f"{item.name}: {last.error or 'held by the push guard'}",
                            "link": link,
                            "run": last.id,
                        }
                    )
                elif held:
                    alerts.append(
                        {
                            "kind": "pushes_held",
                            "connector": item.name,
                            "message": f"{item.name} ({item.mode}): its last run held {held} push(es); "
                            "review a plan of them",
                            "link": link,
                            "run": last.id,
                        }
                    )
        return alerts

    # -- runs ----------------------------------------------------------------------------------

    def runs_filtered(
        self,
        *,
        connector: str | None,
        result: str | None,
        since: str | None,
        until: str | None,
        quarantine: str | None,
        zone: tzinfo,
        page: int,
        per_page: int = PER_PAGE,
    ) -> Page:
        """Runs newest first, each with its duration and open quarantined records, as the runs
        page and the API filter them from the text a viewer gave: days (or moments) read in the
        viewer's ``zone``, ``until`` taking its whole day, and ``quarantine`` "open" for only the
        runs still holding open quarantined records. The summary says how many open quarantined
        records the whole filtered list holds (what the overview's count of a connector links to)."""
        start, end = parse_day(since, "since", zone=zone), parse_day(until, "until", end=True, zone=zone)
        if result and result not in RUN_STATUSES:
            raise InvalidInput(f"unknown run result {result!r}: accepted are {', '.join(RUN_STATUSES)}")
        items, total, held = runs_page(
            self.engine,
            connector=connector or None,
            status=result or None,
            since=start,
            until=end,
            open_quarantine=quarantine == "open",
            limit=per_page,
            offset=_offset(page, per_page),
        )
        return Page(items, page, per_page, total, {"quarantined_open": held})

    def run(self, run_id: str) -> dict[str, Any]:
        """One run, its quarantined records and the records it re-read because ops retried them."""
        found = show_run(self.engine, run_id)
        if found is None:
            raise NotFound(f"no sync run with id {run_id!r}")
        found["reread"] = reread_in_run(self.engine, found)
        finished = found["finished_at"]
        found["duration_seconds"] = (
            int((_parse(finished) - _parse(found["started_at"])).total_seconds()) if finished else None
        )
        return found

    def quarantined(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        state: str | None = None,
        page: int = 1,
        per_page: int = PER_PAGE,
    ) -> Page:
        """One page of a run's quarantined records; the summary lists every reason in the run."""
        if state and state not in QUARANTINE_STATES:
            raise InvalidInput(f"state {state!r}: accepted are {', '.join(QUARANTINE_STATES)}")
        found = quarantine_page(
            self.engine,
            run_id,
            reason=reason or None,
            state=state or None,
            limit=per_page,
            offset=_offset(page, per_page),
        )
        return Page(found["items"], page, per_page, found["total"], {"reasons": found["reasons"]})

    def retry_quarantined(self, quarantine_id: int, account: Account) -> dict[str, Any]:
        from consentsync.app import can_reread

        return quarantine.retry(
            self.engine,
            quarantine_id,
            actor=account.name,
            now=self.ledger.clock(),
            can_reread=lambda name: can_reread(self.config, name),
        )

    def retry_many(
        self,
        run_id: str,
        account: Account,
        *,
        ids: list[int] | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Retry a run's open quarantined records in one go: those of ``ids`` (the ones ticked),
        else those with ``reason``, else all of them. Each retry is its own audit entry; a
        record that cannot be retried (its connector cannot re-read by id) is reported, not fatal.
        """
        run_id = self.run(run_id)["id"]
        open_ids = open_quarantine_ids(self.engine, run_id, reason=None if ids else (reason or None))
        if ids:
            foreign = sorted(set(ids) - set(open_quarantine_ids(self.engine, run_id)))
            if foreign:
                raise InvalidInput(
                    f"quarantined record(s) {', '.join(map(str, foreign[:10]))} are not open records "
                    f"of run {run_id[:8]}"
                )
            open_ids = sorted(set(ids))
        if not open_ids:
            raise InvalidInput("no open quarantined record to retry: tick one, or choose a reason")
        retried: list[int] = []
        refused: list[str] = []
        for quarantine_id in open_ids:
            try:
                self.retry_quarantined(quarantine_id, account)
                retried.append(quarantine_id)
            except InvalidInput as error:
                refused.append(f"{quarantine_id}: {error}")
        return {"run_id": run_id, "retried": retried, "refused": refused}

    # -- audit ---------------------------------------------------------------------------------

    def subject_uids_for_email(self, email: str, *, reader: Reader | None = None) -> list[str]:
        """The subjects an address names, the erased ones included (through the keyed hash).

        With ``reader``, the look-up is written down for each of them as ``subject.viewed``
        (``via`` audit_trail), as opening the person's page is: finding someone's trail by their
        address identifies them and shows their consent history, whether they were erased and
        why objections about them were decided. Unaudited, any viewer could look anyone up
        there (a neighbour, someone who asked to be erased) and leave no trace of it."""
        uids = self.ledger.subject_uids_for_email(lookup_email(email))
        if reader is not None:
            for uid in uids:
                self._read(uid, "subject.viewed", reader, by="email", via="audit_trail")
        return uids

    def audit(
        self,
        *,
        subjects: list[str] | None = None,
        connector: str | None = None,
        rule: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page: int = 1,
        per_page: int = PER_PAGE,
        reader: Reader | None = None,
        through: int | None = None,
        include_views: bool = False,
    ) -> Page:
        """A page of the trail, newest first. With ``reader``, the read is written down once the
        page is read (``audit.log_viewed``: who, the filters, the page, how many entries): the
        trail holds every person's history, and browsing it left no trace, where opening one
        person's page does. ``through``: the entries up to that seq (the first page's ``through``,
        in the page's summary: the head it was read at), so that the entries written since, each
        page's own read among them, do not move the pages. The trail's own reads
        (``audit.viewed``) are left out unless ``include_views`` or ``action`` names them: each
        page read writes one, and they filled the first page."""
        filters = audit.AuditFilters(
            subject_uids=subjects,
            connector=connector or None,
            rule=rule or None,
            action=action or None,
            since=since,
            until=until,
            include_views=include_views,
        )
        with reading(self.engine) as conn:
            if through is None:
                through = int(conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1)).scalar_one())
            filters["through"] = through
            total = audit.count(conn, **filters)
            items = list(
                audit.entries(
                    conn, **filters, limit=per_page, offset=_offset(page, per_page), newest_first=True
                )
            )
        if reader is not None:
            account, source = reader
            audit.log_viewed(
                self.engine,
                self.ledger.clock(),
                filters,
                len(items),
                actor=account.name,
                source=source,
                page=page,
                per_page=per_page,
            )
        return Page(items, page, per_page, total, summary={"through": through})

    def audit_choices(self, *, extra: dict[str, str] | None = None) -> dict[str, list[str]]:
        """What the trail's connector, rule and action filters offer: the values that exist (kept
        between requests, and brought up to date by reading only the entries added since), plus
        the configured connectors and whatever a filter is set to now."""
        with self._choices_lock:
            found = audit_choices(self.engine, after_seq=self._choices["head"])
            for key in ("actions", "rules", "connectors"):
                self._choices[key] |= found[key]
            self._choices["head"] = max(self._choices["head"], found["head"])
            choices = {
                "connector": self._choices["connectors"] | {c.name for c in self.config.settings.connectors},
                "rule": set(self._choices["rules"]),
                "action": set(self._choices["actions"]),
            }
        for key, value in (extra or {}).items():
            if value:
                choices[key].add(value)
        return {key: sorted(values) for key, values in choices.items()}

    def verify_audit(self) -> dict[str, Any]:
        """The chain recomputed from one snapshot, as a reader: a write transaction (what
        ``engine.connect()`` begins) held the ledger's writer lock for the whole pass, minutes on
        a large ledger, so every sync and every capture of the preference centre waited behind
        any viewer's click on *Verify chain* and failed once its lock wait ran out. SQLite reads
        a snapshot in a deferred transaction; PostgreSQL needs REPEATABLE READ for one, else
        entries appended during the pass would read as a chain running past its head."""
        with reading(self.engine) as conn:
            if is_postgres(self.engine):
                conn.execution_options(isolation_level="REPEATABLE READ")
            return audit.verify(conn).as_dict()

    # -- subjects ------------------------------------------------------------------------------

    def _read(self, uid: str, action: str, reader: Reader, **what: Any) -> None:
        """A read of one person's record, written down (Art. 30): who, how, which subject (its
        uid: never the address)."""
        account, source = reader
        self.ledger.audit_read(uid, action, actor=account.name, source=source, what=what)

    def subject_by_email(self, email: str, *, reader: Reader | None) -> dict[str, Any]:
        view = self.ledger.subject_view(lookup_email(email))
        if reader is not None:
            self._read(view["subject"], "subject.viewed", reader, by="email")
        return view

    def subject(self, uid: str, *, reader: Reader | None) -> dict[str, Any]:
        """One person's record; ``reader`` (who, from where) is audited, unless the caller
        audits the read itself (an export, an objection's context)."""
        with self.engine.connect() as conn:
            email = conn.execute(
                select(subject_identifiers.c.value)
                .join(subjects, subjects.c.id == subject_identifiers.c.subject_id)
                .where(subjects.c.uid == uid, subject_identifiers.c.kind == "email")
                .order_by(subject_identifiers.c.id)
                .limit(1)
            ).scalar()
        if email is None:
            raise NotFound(f"no subject {uid!r} with an address in the ledger (unknown, or erased)")
        view = self.ledger.subject_view(email)
        if reader is not None:
            self._read(view["subject"], "subject.viewed", reader)
        return view

    @staticmethod
    def evidence_by_purpose(view: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (purpose, channel), the newest event the ledger holds for it: what the person was
        shown (notice version), when they confirmed (double opt-in), the reference to the proof,
        and where it was captured (source and origin), with the soft opt-in's conditions."""
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for event in view["history"]:  # oldest first: a later one replaces an earlier
            key = (event["purpose"], event["channel"])
            when = event["event_time"] or event["recorded_at"] or ""
            held = newest.get(key)
            if held is None or when >= (held["event_time"] or held["recorded_at"] or ""):
                newest[key] = event
        return newest

    def export(self, uid: str, fmt: str, *, reader: Reader) -> tuple[bytes, str, str]:
        """(content, media type, file name) of one subject's record."""
        from consentsync.export import with_restrictions, write_export

        if fmt not in EXPORT_TYPES:
            raise InvalidInput(f"unknown export format {fmt!r}: accepted are {', '.join(EXPORT_TYPES)}")
        view = with_restrictions(self.ledger, self.subject(uid, reader=None))
        self._read(view["subject"], "subject.exported", reader, format=fmt)
        with tempfile.TemporaryDirectory(prefix="consentsync-export-") as folder:
            path = Path(folder) / f"subject.{fmt}"
            write_export(view, fmt, path)
            content = path.read_bytes()
        return content, EXPORT_TYPES[fmt], f"subject-{uid}.{fmt}"

    # -- people to chase ------------------------------------------------------------------------

    def requested(
        self, *, older_than_days: int | None = None, page: int = 1, per_page: int = PER_PAGE
    ) -> Page:
        """Consents requested and still unanswered (``ledger requested``): never an erased or
        restricted person, nor one a subject-wide rule keeps from being contacted.

        Each person is named by a masked address, as in the objection queue: the list is a list
        of people for every viewer, 200 a page through the API, and reading it is not audited.
        With full addresses any viewer could copy out everyone who was asked for consent and did
        not answer, and no entry would say so; the person's page (linked by uid) shows the
        address, and audits that read. One page is read, not every request with its context."""
        days = (
            self.config.settings.policy.requested_stale_after_days
            if older_than_days is None
            else older_than_days
        )
        items, total = requested_page(self.ledger, days, offset=_offset(page, per_page), limit=per_page)
        emails = emails_of(self.engine, [item["subject_id"] for item in items])
        for item in items:
            email = emails.get(item.pop("subject_id"))
            item["email"] = mask_email(email) if email else None
        return Page(items, page, per_page, total)

    # -- objections ----------------------------------------------------------------------------

    def count_objections(self, *, pending_only: bool) -> int:
        with reading(self.engine) as conn:
            counts = _objection_counts(conn)
        return counts.get(ObjectionStatus.PENDING.value, 0) if pending_only else sum(counts.values())

    def objections(self, *, pending_only: bool, page: int = 1, per_page: int = PER_PAGE) -> Page:
        """One page of the review queue, pending first, oldest first (ties by id), read a page at
        a time: each part through the (status, raised_at) index, so that a page view reads the
        rows it shows, not every objection ever raised. Each person is named by a masked address:
        the queue is a list of people for every viewer; the objection's own page shows the
        address, and audits that read."""
        start = _offset(page, per_page)
        with reading(self.engine) as conn:
            counts = _objection_counts(conn)
            pending = counts.get(ObjectionStatus.PENDING.value, 0)
            total = pending if pending_only else sum(counts.values())
            rows: list[Any] = []
            if start < pending:
                rows += _oldest(conn, (ObjectionStatus.PENDING.value,), offset=start, limit=per_page)
            room = per_page - len(rows)
            if not pending_only and room > 0 and start + len(rows) < total:
                rows += _oldest(conn, _DECIDED, offset=max(0, start - pending), limit=room)
            items = _objection_views(conn, rows)
        for item in items:
            item["email"] = mask_email(item["email"]) if item["email"] else None
        return Page(self._with_trail(items), page, per_page, total)

    def _with_trail(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each objection with who raised it and the decision's reason, from the audit log (the
        objections table keeps neither): a policy decision's reason is the rule that made it."""
        if not rows:
            return rows
        raised: dict[int, dict[str, Any]] = {}
        reasons: dict[int, str] = {}
        with reading(self.engine) as conn:
            query = (
                select(audit_entries.c.action, audit_entries.c.payload, audit_details.c.content)
                .outerjoin(audit_details, audit_details.c.seq == audit_entries.c.seq)
                .where(
                    audit_entries.c.action.in_(("objection.raised", "objection.decided")),
                    audit.about(conn, [row["subject"] for row in rows]),
                )
            )
            for action, text, content in conn.execute(query):
                entry = json.loads(text)
                key = (entry.get("what") or {}).get("objection")
                if action == "objection.raised":
                    raised[key] = entry
                elif content:
                    # Details edited outside consentsync are no reason (audit verify names them).
                    reasons[key] = (audit.read_details(content) or {}).get("reason")
        for row in rows:
            entry = raised.get(row["id"], {})
            row["raised_by"] = entry.get("actor")
            policy = (row["decided_by"] or "").startswith("policy:")
            row["reason"] = reasons.get(row["id"]) or (entry.get("rule") if policy else None)
        return rows

    def objection(self, objection_id: int, *, reader: Reader | None) -> dict[str, Any]:
        """One objection with its subject's context: current state, history, other objections."""
        with reading(self.engine) as conn:
            row = conn.execute(_OBJECTION_ROWS.where(objections.c.id == objection_id)).one_or_none()
            if row is None:
                raise NotFound(f"no objection with id {objection_id}")
            found = _objection_views(conn, [row])[0]
        self._with_trail([found])
        try:
            context = self.subject(found["subject"], reader=None)
        except NotFound:
            context = None  # erased since: the objection stays, the person's details do not
        if context is not None and reader is not None:
            self._read(found["subject"], "subject.viewed", reader, objection=objection_id)
        return {"objection": found, "subject": context}

    def decide(self, objection_id: int, *, uphold: bool, reason: str, account: Account) -> dict[str, Any]:
        if not reason.strip():
            raise InvalidInput("a reason is required: a decision without one cannot be audited")
        return self.ledger.decide_objection(objection_id, uphold=uphold, by=account.name, reason=reason)

    # -- configuration -------------------------------------------------------------------------

    def configuration(self) -> dict[str, Any]:
        from consentsync.mapping import load_mapping

        settings = self.config.settings
        connectors = []
        for item in settings.connectors:
            mappings = []
            for path in item.mappings:
                try:
                    loaded = load_mapping(
                        self.config.resolve_path(path),
                        purposes=self.config.purposes,
                        channels=set(self.config.channels),
                    )
                    mappings.append(
                        {
                            "file": path,
                            "object": loaded.object,
                            "reads": loaded.pull_fields(),
                            "writes": loaded.push_fields(),
                            "consents": [
                                {
                                    "purpose": _shown(c.purpose),
                                    "channel": _shown(c.channel),
                                    "field": c.status.field,
                                }
                                for c in loaded.spec.consents
                            ],
                            "error": None,
                        }
                    )
                except (InvalidInput, ConfigError, OSError) as error:
                    mappings.append(
                        {
                            "file": path,
                            "object": None,
                            "reads": [],
                            "writes": [],
                            "consents": [],
                            "error": masked_text(str(error)),
                        }
                    )
            connectors.append(
                {
                    "name": item.name,
                    "vendor": item.vendor,
                    "schedule": item.schedule.model_dump(exclude_none=True),
                    "settings": {k: masked(k, v) for k, v in item.settings.items()},
                    "mappings": mappings,
                }
            )
        return {
            "file": str(self.config.path),
            "ledger": masked_text(_database_kind(self.config.ledger_url)),
            "channels": list(self.config.channels),
            "policy": settings.policy.model_dump(mode="json"),
            "purposes": [p.model_dump(mode="json") for p in settings.purposes],
            "connectors": connectors,
        }


def masked(key: str, value: Any) -> Any:
    """A setting as the configuration page may show it: a secret's value hidden by its name
    (the SDK's ``is_secret_key``, and private keys), and credentials inside any text (a URL's
    user and password, a token in its query, a bearer token) hidden wherever they are."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if is_secret_key(key) or _PRIVATE_KEY.search(key):
        return HIDDEN
    if isinstance(value, dict):
        return {k: masked(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(key, v) for v in value]
    return masked_text(str(value))


def masked_text(text: str) -> str:
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{HIDDEN}@", scrub(text))
    return mask_secret_params(text, HIDDEN)


def _shown(ref: Any) -> str:
    """A mapping's purpose or channel as written: a key, a list of keys, or the field it is read from."""
    if isinstance(ref, list):
        return ", ".join(ref)
    if isinstance(ref, str):
        return ref
    return f"from field {ref.field}"


def _database_kind(url: str) -> str:
    """The ledger's kind and place without credentials."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_day(value: str | None, what: str, *, end: bool = False, zone: tzinfo = UTC) -> datetime | None:
    """A date (YYYY-MM-DD) or ISO time from a filter, as a UTC moment. A date is a day in ``zone``
    (the viewer's: "today" in Sydney starts at 13:00 UTC the day before); ``end`` makes a date's
    end exclusive (the next day's midnight there). A time without an offset is in ``zone`` too."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1 if end else 0)
            return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC here, where a time at the edge of the calendar fails as input, not later.
        return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{what}: expected a date YYYY-MM-DD or an ISO 8601 time, got {value!r}") from None


__all__ = ["EXPORT_TYPES", "PER_PAGE", "RUN_STATUSES", "Console", "Page", "iso", "parse_day"]


# -- the objection queue's reads ------------------------------------------------------------------

_DECIDED = tuple(status.value for status in ObjectionStatus if status != ObjectionStatus.PENDING)
_OBJECTION_ROWS = select(objections, subjects.c.uid).join(subjects, subjects.c.id == objections.c.subject_id)
_OBJECTION_VIEW = RowView(
    "id subject=uid purpose direct_marketing status raised_at source decided_by decided_at"
)


def _objection_counts(conn: Connection) -> dict[str, int]:
    """Objections per status, counted in the (status, raised_at) index: naming the statuses
    lets every database count there instead of reading the table."""
    statuses = [status.value for status in ObjectionStatus]
    query = (
        select(objections.c.status, func.count())
        .where(objections.c.status.in_(statuses))
        .group_by(objections.c.status)
    )
    return {status: int(count) for status, count in conn.execute(query)}


def _oldest(conn: Connection, statuses: tuple[str, ...], *, offset: int, limit: int) -> list[Any]:
    """Rows ``offset`` to ``offset + limit`` of the objections in ``statuses``, oldest first (ties
    by id). Each status is read in index order, no further than the page needs, and the
    statuses' runs are merged: one query for all of them would sort every decided objection."""

    def run(status: str, skip: int, take: int) -> list[Any]:
        query = _OBJECTION_ROWS.where(objections.c.status == status)
        query = query.order_by(objections.c.raised_at, objections.c.id).offset(skip).limit(take)
        return list(conn.execute(query).all())

    if len(statuses) == 1:
        return run(statuses[0], offset, limit)
    runs = [run(status, 0, offset + limit) for status in statuses]
    merged = heapq.merge(*runs, key=lambda row: (row.raised_at, row.id))
    return list(itertools.islice(merged, offset, offset + limit))


def _objection_views(conn: Connection, rows: list[Any]) -> list[dict[str, Any]]:
    """The rows as the API shows them, each with its person's address (the first the ledger
    holds; none once erased), looked up for these people only."""
    emails: dict[int, str] = {}
    if rows:
        found = conn.execute(
            select(subject_identifiers.c.subject_id, subject_identifiers.c.value)
            .where(
                subject_identifiers.c.kind == "email",
                subject_identifiers.c.subject_id.in_(sorted({row.subject_id for row in rows})),
            )
            .order_by(subject_identifiers.c.id)
        )
        for subject_id, value in found:
            emails.setdefault(subject_id, value)
    views = []
    for row in rows:
        view = _OBJECTION_VIEW(row)
        views.append(
            {
                "id": view.pop("id"),
                "subject": view.pop("subject"),
                "email": emails.get(row.subject_id),
                **view,
            }
        )
    return views
