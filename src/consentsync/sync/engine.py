"""One sync run for one connector: the fixed flow every connector goes through.

pull (connector) -> map (mapping file) -> identify (CRM id, then email) -> reconcile (pure) ->
commit (ledger events, audit entries, snapshots, quarantine, outbox rows and the new cursor, in
ONE transaction per page) -> push (outbox -> connector; a row is done only when the CRM
acknowledged it).

A crash anywhere replays safely: the cursor never moves past a record that was not committed,
nor past the moment the run started (less a lag for CRMs that stamp whole seconds).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, TypeVar

import orjson
import structlog
from sqlalchemy import Connection, and_, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import EffectiveState, Evidence, InvalidInput, canonical_json, iso
from consentsync.ledger.bulk import db_time, upsert_rows
from consentsync.ledger.identity import CrmLink, Identity
from consentsync.ledger.schema import (
    crm_links,
    crm_snapshots,
    outbox,
    quarantine,
    state_changes,
    subjects,
    sync_cursors,
    sync_runs,
)
from consentsync.ledger.service import Ledger, RecordRequest
from consentsync.mapping import Mapping
from consentsync.sdk.connector import Connector, CrmRecord, Cursor, RecordUpdate
from consentsync.sdk.errors import Action, BudgetExhausted, ConnectorError
from consentsync.sync.locks import connector_lock

log = structlog.get_logger("consentsync.sync")
LEDGER_FEED = "~ledger"  # the sync_cursors row that holds this connector's place in the change feed
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SyncOptions:
    batch_size: int = 200
    # Records changed within this many seconds before the run started are left to the next run:
    # CRMs stamp whole seconds, so a later change in the same second could otherwise be missed.
    signpost_lag_seconds: float = 2.0
    # Outbox rows handed to the connector per write: large enough that a connector can choose its
    # bulk API (Salesforce: Bulk API 2.0 from 10,000 changes) over its batch one.
    push_batch_size: int = 10_000
    # Attempts (one per run) before a push the CRM keeps refusing is dead-lettered.
    max_push_attempts: int = 10


@dataclass(slots=True)
class RunCounts:
    read: int = 0
    quarantined: int = 0
    evidence_recorded: int = 0
    evidence_duplicates: int = 0
    unchanged_records: int = 0
    state_changes: int = 0
    subjects_created: int = 0
    pushes_enqueued: int = 0
    pushed: int = 0
    push_failed: int = 0
    api_calls: int = 0
    api_used: int | None = None
    api_limit: int | None = None


@dataclass(frozen=True, slots=True)
class PlannedChange:
    subject: str
    purpose: str
    channel: str
    before: str
    after: str
    rule: str


@dataclass(frozen=True, slots=True)
class PlannedPush:
    object_type: str
    record_id: str
    fields: dict[str, Any]
    rule: str | None


@dataclass(slots=True)
class RunReport:
    run_id: str
    connector: str
    status: str  # succeeded, stopped, failed, dry_run
    started_at: datetime
    finished_at: datetime | None = None
    counts: RunCounts = field(default_factory=RunCounts)
    error: str | None = None
    plan_changes: list[PlannedChange] = field(default_factory=list)
    plan_pushes: list[PlannedPush] = field(default_factory=list)
    # For progress displays: the object being read, how many of it so far, and how many in all.
    stage: str = ""
    stage_done: int = 0
    stage_total: int | None = None


class _Stop(Exception):
    """The daemon asked the run to stop between pages."""


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class SyncEngine:
    def __init__(
        self,
        ledger: Ledger,
        connector: Connector,
        mappings: Sequence[Mapping],
        options: SyncOptions | None = None,
        progress: Callable[[RunReport], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.connector = connector
        self.mappings = list(mappings)
        self.by_object = {m.object: m for m in self.mappings}
        self.options = options or SyncOptions()
        self.progress = progress or (lambda _report: None)
        self.name = connector.name
        self._shared: Connection | None = None  # the one transaction of a dry run
        # Set by the daemon on SIGTERM: the page in hand is committed, then the run stops cleanly.
        self.stop_requested = threading.Event()

    # -- the run -------------------------------------------------------------------------------

    def run(self, *, full: bool = False, dry_run: bool = False) -> RunReport:
        """One run; raises ``RunInProgress`` when another process is running this connector."""
        with connector_lock(self.ledger.engine, self.name):
            return self._run(full=full, dry_run=dry_run)

    def _run(self, *, full: bool, dry_run: bool) -> RunReport:
        started = self.ledger.clock()
        report = RunReport(str(uuid.uuid4()), self.name, "running", started)
        until = started - timedelta(seconds=self.options.signpost_lag_seconds)
        bound = log.bind(run_id=report.run_id, connector=self.name)
        structlog.contextvars.bind_contextvars(run_id=report.run_id, connector=self.name)
        if not dry_run:
            self._record_run_start(report, full)
        bound.info("sync.started", full=full, dry_run=dry_run)
        try:
            if dry_run:
                self._plan(report, until=until, full=full)
            else:
                self._follow_ledger(report)
                for mapping in self.mappings:
                    self._pull(mapping, report, until=until, full=full, dry_run=False)
                self._reread_quarantined(report)
                self._follow_ledger(report)
                self._push(report)
            report.status = "dry_run" if dry_run else "succeeded"
        except _Stop:
            report.status = "stopped"
            report.error = "shutdown requested: stopped after the last committed page"
        except (BudgetExhausted, ConnectorError) as error:
            stops = isinstance(error, BudgetExhausted) or error.action is Action.RATE_LIMITED
            report.status = "stopped" if stops else "failed"
            report.error = f"{error.rule.fault.value}: {error}"
            bound.error("sync.interrupted", status=report.status, reason=error.rule.reason, error=str(error))
        except InvalidInput as error:
            report.status = "failed"
            report.error = f"config: {error}"
            bound.error("sync.failed", error=str(error))
        except SQLAlchemyError as error:
            # The ledger went away mid-run: the page in hand was rolled back whole; the cursor
            # stays at the last committed page, where the next run resumes.
            report.status = "failed"
            report.error = f"ledger: {type(error).__name__}: {getattr(error, 'orig', error)}"
            bound.error("sync.failed", error=report.error)
        finally:
            usage = self.connector.usage
            report.counts.api_calls = usage.calls
            report.counts.api_used, report.counts.api_limit = usage.used, usage.limit
            report.finished_at = self.ledger.clock()
            if not dry_run:
                try:
                    self._record_run_end(report)
                except SQLAlchemyError as error:
                    bound.error("sync.run_not_recorded", error=str(getattr(error, "orig", error)))
        bound.info("sync.finished", status=report.status, **asdict(report.counts))
        structlog.contextvars.unbind_contextvars("run_id", "connector")
        return report

    def _plan(self, report: RunReport, *, until: datetime, full: bool) -> None:
        """A dry run: the whole run in one transaction that is rolled back, so that every page
        sees what earlier pages did, and the plan is exactly what a real run would do now."""
        with self.ledger.engine.connect() as conn:
            outer = conn.begin()
            self._shared = conn
            try:
                self._follow_ledger(report)
                for mapping in self.mappings:
                    self._pull(mapping, report, until=until, full=full, dry_run=True)
                self._follow_ledger(report)
                pending = conn.execute(
                    select(outbox)
                    .where(outbox.c.connector == self.name, outbox.c.status == "pending")
                    .order_by(outbox.c.id)
                ).all()
                report.plan_pushes = [
                    PlannedPush(row.object_type, row.record_id, orjson.loads(row.fields), row.rule)
                    for row in pending
                ]
            finally:
                self._shared = None
                outer.rollback()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._shared is not None:
            yield self._shared
        else:
            with self.ledger.engine.begin() as conn:
                yield conn

    # -- pull ----------------------------------------------------------------------------------

    def _pull(
        self, mapping: Mapping, report: RunReport, *, until: datetime, full: bool, dry_run: bool
    ) -> None:
        with self._transaction() as conn:
            cursor = Cursor() if full else self._load_cursor(conn, mapping.object)
        self.connector.completed_cursor = None
        records = self.connector.read_changes(mapping.object, mapping.pull_fields(), cursor, until)
        report.stage, report.stage_done, report.stage_total = f"reading {mapping.object}", 0, None
        kept = False  # whether the connector's completed cursor (a new delta token) is stored
        for page in batched(records, self.options.batch_size):
            if self.stop_requested.is_set():
                raise _Stop
            report.stage_done += len(page)
            report.stage_total = self.connector.expected_records
            # A read that ended (the last page is in hand) may have handed over a new token: it is
            # stored with this page. Before that, pages keep the token the read started from.
            final = self.connector.completed_cursor
            with self._transaction() as conn:
                self._commit_page(
                    conn, mapping, page, report, dry_run=dry_run, token=cursor.token, final=final
                )
            kept = final is not None
            report.counts.api_calls = self.connector.usage.calls
            self.progress(report)
        final = self.connector.completed_cursor
        if final is not None and not kept:
            # The read ended after the last committed page (or yielded nothing): every record is
            # committed, so the new token is safe to keep.
            with self._transaction() as conn:
                self._save_cursor(conn, mapping.object, final, report.run_id, self.ledger.clock())

    def _reread_quarantined(self, report: RunReport) -> None:
        """Records quarantined on reading that ops asked to retry are read again by id and go
        through the same flow as any page; the cursor stays where it is (they are behind it).
        Each retried row is resolved; a record that still fails is quarantined again, in this run."""
        if not self.connector.can_read_by_id:
            return
        with self._transaction() as conn:
            asked = conn.execute(
                select(quarantine.c.id, quarantine.c.object_type, quarantine.c.record_id).where(
                    quarantine.c.connector == self.name,
                    quarantine.c.stage == "pull",
                    quarantine.c.resolved_at.is_(None),
                    quarantine.c.retry_requested_at.is_not(None),
                )
            ).all()
        by_object: dict[str, list[Any]] = {}
        for row in asked:
            by_object.setdefault(row.object_type, []).append(row)
        for object_type, rows in by_object.items():
            mapping = self.by_object.get(object_type)
            if mapping is None:
                continue
            ids = sorted({row.record_id for row in rows})
            report.stage, report.stage_done, report.stage_total = f"re-reading {object_type}", 0, len(ids)
            page = list(self.connector.read_records(object_type, mapping.pull_fields(), ids))
            with self._transaction() as conn:
                if page:
                    self._commit_page(conn, mapping, page, report, dry_run=False, advance_cursor=False)
                conn.execute(
                    update(quarantine)
                    .where(quarantine.c.id.in_([row.id for row in rows]))
                    .values(resolved_at=self.ledger.clock())
                )
            report.stage_done = len(ids)
            self.progress(report)

    def _commit_page(
        self,
        conn: Connection,
        mapping: Mapping,
        page: list[CrmRecord],
        report: RunReport,
        *,
        dry_run: bool,
        advance_cursor: bool = True,
        token: str | None = None,
        final: Cursor | None = None,
    ) -> None:
        now = self.ledger.clock()
        counts = report.counts
        counts.read += len(page)
        snapshots = self._load_snapshots(conn, mapping.object, [r.record_id for r in page])
        good: list[tuple[CrmRecord, Identity, list[CrmLink], list[Evidence]]] = []
        problems: list[dict[str, Any]] = []
        for record in page:
            try:
                record_id, email, links = mapping.identity_from(record.fields)
                evidence = mapping.evidence_from(record.fields, connector=self.name, observed_at=now)
                for item in evidence:
                    self.ledger.validate(item)
            except InvalidInput as error:
                problems.append(
                    self._quarantine_row(report, mapping.object, record.record_id, "pull", str(error), now)
                )
                continue
            extra = [CrmLink(self.name, obj, linked) for obj, linked in links]
            good.append(
                (
                    record,
                    Identity(email=email, link=CrmLink(self.name, mapping.object, record_id)),
                    extra,
                    evidence,
                )
            )

        # Identity: the record's own id first, then the records it points to (a consent record's
        # Individual), then the email address.
        known = self._known_links(
            conn, [link for _, own, links, _ in good for link in (own.link, *links) if link]
        )
        identities = []
        for _, identity, links, _ in good:
            if identity.link not in known:
                via = next((known[link] for link in links if link in known), None)
                if via is not None:
                    identity = Identity(email=identity.email, link=identity.link, subject_id=via)
            identities.append(identity)
        subject_ids, created = self.ledger.link_in(conn, identities, run_id=report.run_id)
        extra_links = [
            Identity(link=link, subject_id=subject_id)
            for (_, _, links, _), subject_id in zip(good, subject_ids, strict=True)
            for link in links
        ]
        self.ledger.link_in(conn, extra_links, run_id=report.run_id)
        counts.subjects_created += created

        requests: list[RecordRequest] = []
        snapshot_rows: list[tuple[Any, ...]] = []
        link_ids = self._link_ids(conn, mapping.object, [r.record_id for r, _, _, _ in good])
        for (record, _identity, _links, evidence), subject_id in zip(good, subject_ids, strict=True):
            seen = snapshots.get(record.record_id, ({}, {}))[0]
            view = {_evidence_key(e): _evidence_view(e) for e in evidence}
            # Undated values are evidence only when they change: a re-read is not a new observation.
            fresh = [e for e in evidence if seen.get(_evidence_key(e)) != view[_evidence_key(e)]]
            if not fresh:
                counts.unchanged_records += 1
            requests += [RecordRequest(Identity(subject_id=subject_id), e) for e in fresh]
            snapshot_rows.append(
                (
                    link_ids[record.record_id],
                    canonical_json(view),
                    canonical_json(_consent_fields(mapping, record.fields)),
                    db_time(conn, now),
                )
            )
        stats, outcomes = self.ledger.record_in(conn, requests, run_id=report.run_id)
        counts.evidence_recorded += stats.recorded
        counts.evidence_duplicates += stats.duplicates
        counts.state_changes += stats.state_changes
        upsert_rows(
            conn, crm_snapshots, ("link_id", "evidence", "fields", "updated_at"), ("link_id",), snapshot_rows
        )
        if problems:
            conn.execute(insert(quarantine), problems)
        self._enqueue_pushes(conn, sorted(set(subject_ids)), report, now)
        if not advance_cursor:
            pass  # records re-read by id (quarantine retries) are no position in the change feed
        elif final is not None:
            self._save_cursor(conn, mapping.object, final, report.run_id, now)
        elif good or problems:
            last = page[-1]
            self._save_cursor(
                conn, mapping.object, Cursor(last.modstamp, last.record_id, token), report.run_id, now
            )
        if dry_run:
            uids = self._uids(conn, [o.subject_id for o in outcomes])
            report.plan_changes += [
                PlannedChange(
                    uids[o.subject_id],
                    o.after.purpose,
                    o.after.channel,
                    _brief(o.before),
                    _brief(o.after),
                    o.after.rule,
                )
                for o in outcomes
                if o.before is not None and o.after is not None and _brief(o.before) != _brief(o.after)
            ]

    # -- outbox --------------------------------------------------------------------------------

    def _enqueue_pushes(
        self, conn: Connection, subject_ids: list[int], report: RunReport, now: datetime
    ) -> None:
        """For every record of this CRM that belongs to these people, the fields that differ
        from what the ledger implies become an outbox row (superseding an older pending one)."""
        if not subject_ids:
            return
        states = self.ledger.effective_states_in(conn, subject_ids)
        rows = conn.execute(
            select(
                crm_links.c.id,
                crm_links.c.subject_id,
                crm_links.c.object_type,
                crm_links.c.record_id,
                crm_snapshots.c.fields,
            )
            .outerjoin(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
            .where(crm_links.c.connector == self.name, crm_links.c.subject_id.in_(subject_ids))
            .order_by(crm_links.c.id)
        ).all()
        examined: dict[str, list[str]] = {}
        new_rows: list[dict[str, Any]] = []
        for row in rows:
            mapping = self.by_object.get(row.object_type)
            if mapping is None:
                continue
            examined.setdefault(row.object_type, []).append(row.record_id)
            known = orjson.loads(row.fields) if row.fields else {}
            subject_states = states[row.subject_id]
            updates = mapping.updates_for(known, subject_states)
            if not updates:
                continue
            rule = _deciding_rule(subject_states)
            new_rows.append(
                {
                    "connector": self.name,
                    "object_type": row.object_type,
                    "record_id": row.record_id,
                    "subject_id": row.subject_id,
                    "fields": canonical_json(updates),
                    "suppression": any(state.suppressed for state in subject_states.values()),
                    "rule": rule,
                    "run_id": report.run_id,
                    "created_at": now,
                    "status": "pending",
                    "attempts": 0,
                }
            )
        # What was pending for these records was decided on an older state: the rows above
        # (or nothing, where the CRM already agrees) replace it.
        for object_type, record_ids in examined.items():
            conn.execute(
                update(outbox)
                .where(
                    outbox.c.connector == self.name,
                    outbox.c.object_type == object_type,
                    outbox.c.record_id.in_(record_ids),
                    outbox.c.status == "pending",
                )
                .values(status="superseded", done_at=now)
            )
        if new_rows:
            conn.execute(insert(outbox), new_rows)
        report.counts.pushes_enqueued += len(new_rows)

    def _follow_ledger(self, report: RunReport) -> None:
        """Enqueues pushes for people whose state changed in the ledger since this connector last
        looked: an objection decided by ops, an erasure, a withdrawal captured in another CRM."""
        while True:
            with self._transaction() as conn:
                position = self._load_position(conn)
                rows = conn.execute(
                    select(state_changes.c.id, state_changes.c.subject_id)
                    .where(state_changes.c.id > position)
                    .order_by(state_changes.c.id)
                    .limit(self.options.batch_size)
                ).all()
                if not rows:
                    return
                now = self.ledger.clock()
                self._enqueue_pushes(conn, sorted({row.subject_id for row in rows}), report, now)
                upsert_rows(
                    conn,
                    sync_cursors,
                    ("connector", "object_type", "cursor", "run_id", "updated_at"),
                    ("connector", "object_type"),
                    [
                        (
                            self.name,
                            LEDGER_FEED,
                            canonical_json({"state_change_id": rows[-1].id}),
                            report.run_id,
                            db_time(conn, now),
                        )
                    ],
                )

    def _load_position(self, conn: Connection) -> int:
        stored = conn.execute(
            select(sync_cursors.c.cursor).where(
                sync_cursors.c.connector == self.name, sync_cursors.c.object_type == LEDGER_FEED
            )
        ).scalar()
        return int(orjson.loads(stored)["state_change_id"]) if stored else 0

    def _push(self, report: RunReport) -> None:
        """Drains this connector's pending outbox rows once, oldest first; a row that fails with a
        retryable error stays pending for the next run."""
        floor = 0
        while True:
            with self.ledger.engine.connect() as conn:
                rows = conn.execute(
                    select(outbox)
                    .where(outbox.c.connector == self.name, outbox.c.status == "pending", outbox.c.id > floor)
                    .order_by(outbox.c.id)
                    .limit(self.options.push_batch_size)
                ).all()
            if not rows or self.stop_requested.is_set():
                return
            floor = rows[-1].id
            report.stage, report.stage_done, report.stage_total = "pushing", report.counts.pushed, None
            updates = [RecordUpdate(r.object_type, r.record_id, orjson.loads(r.fields)) for r in rows]
            results = self.connector.write(updates)
            now = self.ledger.clock()
            with self.ledger.engine.begin() as conn:
                records: list[AuditRecord] = []
                uids = self._uids(conn, [r.subject_id for r in rows])
                acknowledged = [
                    (row, update_)
                    for row, update_, result in zip(rows, updates, results, strict=True)
                    if result.ok
                ]
                olds = self._apply_snapshots(
                    conn, [(row, update_.fields) for row, update_ in acknowledged], now
                )
                if acknowledged:
                    conn.execute(
                        update(outbox)
                        .where(outbox.c.id.in_([row.id for row, _ in acknowledged]))
                        .values(status="done", done_at=now, attempts=outbox.c.attempts + 1)
                    )
                for row, update_ in acknowledged:
                    report.counts.pushed += 1
                    records.append(
                        AuditRecord(
                            "crm.pushed",
                            {
                                "connector": self.name,
                                "object": row.object_type,
                                "record": row.record_id,
                                "outbox": row.id,
                            },
                            old=olds[row.id],
                            new=dict(update_.fields),
                            rule=row.rule,
                            source=self.name,
                            actor="consentsync",
                            run_id=report.run_id,
                            subject_uid=uids[row.subject_id],
                            subject_id=row.subject_id,
                        )
                    )
                for row, result in zip(rows, results, strict=True):
                    if result.ok:
                        continue
                    report.counts.push_failed += 1
                    reason = f"{result.error_code}: {result.message}"
                    attempts = row.attempts + 1
                    # A row the CRM keeps refusing is dead-lettered with its reason for ops
                    # (consentsync outbox list --dead / retry) instead of being retried forever.
                    alive = result.retryable and attempts < self.options.max_push_attempts
                    conn.execute(
                        update(outbox)
                        .where(outbox.c.id == row.id)
                        .values(status="pending" if alive else "dead", attempts=attempts, last_error=reason)
                    )
                    if not alive:
                        conn.execute(
                            insert(quarantine).values(
                                self._quarantine_row(
                                    report, row.object_type, row.record_id, "push", reason, now
                                )
                            )
                        )
                audit.append(conn, records, now)
            report.counts.api_calls = self.connector.usage.calls
            self.progress(report)

    def _apply_snapshots(
        self, conn: Connection, written: list[tuple[Any, dict[str, Any]]], now: datetime
    ) -> dict[int, dict[str, Any]]:
        """Records what the CRM holds after acknowledged writes, so that reading our own writes
        back is neither new evidence nor a reason to push again. Returns each outbox row's old
        values of the fields it wrote."""
        if not written:
            return {}
        by_object: dict[str, list[str]] = {}
        for row, _fields in written:
            by_object.setdefault(row.object_type, []).append(row.record_id)
        links: dict[tuple[str, str], Any] = {}
        for object_type, record_ids in by_object.items():
            for link in conn.execute(
                select(
                    crm_links.c.id, crm_links.c.record_id, crm_snapshots.c.fields, crm_snapshots.c.evidence
                )
                .outerjoin(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
                .where(
                    crm_links.c.connector == self.name,
                    crm_links.c.object_type == object_type,
                    crm_links.c.record_id.in_(record_ids),
                )
            ):
                links[(object_type, link.record_id)] = link
        olds: dict[int, dict[str, Any]] = {}
        snapshots: dict[int, tuple[Any, ...]] = {}
        stamp = db_time(conn, now)
        for row, fields in written:
            link = links[(row.object_type, row.record_id)]
            known = orjson.loads(link.fields) if link.fields else {}
            olds[row.id] = {name: known.get(name) for name in fields}
            merged = {**known, **fields}
            mapping = self.by_object[row.object_type]
            try:
                echoed = mapping.evidence_from(
                    {**merged, mapping.spec.identity.record_id: row.record_id},
                    connector=self.name,
                    observed_at=now,
                )
                view = {_evidence_key(e): _evidence_view(e) for e in echoed}
            except InvalidInput:
                view = orjson.loads(link.evidence) if link.evidence else {}
            snapshots[link.id] = (link.id, canonical_json(view), canonical_json(merged), stamp)
        upsert_rows(
            conn,
            crm_snapshots,
            ("link_id", "evidence", "fields", "updated_at"),
            ("link_id",),
            list(snapshots.values()),
        )
        return olds

    # -- bookkeeping ---------------------------------------------------------------------------

    def _quarantine_row(
        self, report: RunReport, object_type: str, record_id: str, stage: str, reason: str, now: datetime
    ) -> dict[str, Any]:
        report.counts.quarantined += 1
        log.warning(
            "record.quarantined",
            run_id=report.run_id,
            connector=self.name,
            object=object_type,
            record_id=record_id,
            stage=stage,
        )
        return {
            "run_id": report.run_id,
            "connector": self.name,
            "object_type": object_type,
            "record_id": record_id,
            "stage": stage,
            "reason": reason,
            "created_at": now,
        }

    def _load_cursor(self, conn: Connection, object_type: str) -> Cursor:
        stored = conn.execute(
            select(sync_cursors.c.cursor).where(
                sync_cursors.c.connector == self.name, sync_cursors.c.object_type == object_type
            )
        ).scalar()
        return Cursor.from_json(orjson.loads(stored)) if stored else Cursor()

    def _save_cursor(
        self, conn: Connection, object_type: str, cursor: Cursor, run_id: str, now: datetime
    ) -> None:
        upsert_rows(
            conn,
            sync_cursors,
            ("connector", "object_type", "cursor", "run_id", "updated_at"),
            ("connector", "object_type"),
            [(self.name, object_type, canonical_json(cursor.to_json()), run_id, db_time(conn, now))],
        )

    def _load_snapshots(
        self, conn: Connection, object_type: str, record_ids: list[str]
    ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        rows = conn.execute(
            select(crm_links.c.record_id, crm_snapshots.c.evidence, crm_snapshots.c.fields)
            .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
            .where(
                crm_links.c.connector == self.name,
                crm_links.c.object_type == object_type,
                crm_links.c.record_id.in_(record_ids),
            )
        )
        return {row.record_id: (orjson.loads(row.evidence), orjson.loads(row.fields)) for row in rows}

    def _known_links(self, conn: Connection, links: list[CrmLink]) -> dict[CrmLink, int]:
        found: dict[CrmLink, int] = {}
        by_object: dict[str, list[str]] = {}
        for link in links:
            by_object.setdefault(link.object_type, []).append(link.record_id)
        for object_type, record_ids in by_object.items():
            rows = conn.execute(
                select(crm_links.c.record_id, crm_links.c.subject_id).where(
                    crm_links.c.connector == self.name,
                    crm_links.c.object_type == object_type,
                    crm_links.c.record_id.in_(sorted(set(record_ids))),
                )
            )
            found.update({CrmLink(self.name, object_type, row.record_id): row.subject_id for row in rows})
        return found

    def _link_ids(self, conn: Connection, object_type: str, record_ids: list[str]) -> dict[str, int]:
        rows = conn.execute(
            select(crm_links.c.record_id, crm_links.c.id).where(
                and_(
                    crm_links.c.connector == self.name,
                    crm_links.c.object_type == object_type,
                    crm_links.c.record_id.in_(record_ids),
                )
            )
        )
        return {row.record_id: row.id for row in rows}

    def _uids(self, conn: Connection, subject_ids: Iterable[int]) -> dict[int, str]:
        ids = sorted(set(subject_ids))
        if not ids:
            return {}
        rows = conn.execute(select(subjects.c.id, subjects.c.uid).where(subjects.c.id.in_(ids)))
        return {row.id: row.uid for row in rows}

    def _record_run_start(self, report: RunReport, full: bool) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(
                insert(sync_runs).values(
                    id=report.run_id,
                    connector=self.name,
                    started_at=report.started_at,
                    status="running",
                    full_load=full,
                    counts=canonical_json(asdict(report.counts)),
                )
            )

    def _record_run_end(self, report: RunReport) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(
                update(sync_runs)
                .where(sync_runs.c.id == report.run_id)
                .values(
                    status=report.status,
                    finished_at=report.finished_at,
                    counts=canonical_json(asdict(report.counts)),
                    error=report.error,
                )
            )


def _consent_fields(mapping: Mapping, fields: Any) -> dict[str, Any]:
    """The record's values of the fields the mapping reads and writes, less its identity (the
    email address stays out of snapshots: it is personal data the ledger keeps in one place)."""
    identity = mapping.spec.identity
    leave_out = {identity.email, identity.record_id, identity.modstamp}
    return {name: fields.get(name) for name in mapping.pull_fields() if name not in leave_out}


def _evidence_key(evidence: Evidence) -> str:
    return f"{evidence.purpose}/{evidence.channel}"


def _evidence_view(evidence: Evidence) -> list[str | None]:
    return [
        evidence.status.value,
        evidence.basis.value if evidence.basis else None,
        iso(evidence.event_time),
    ]


def _brief(state: EffectiveState | None) -> str:
    if state is None:
        return "-"
    return state.status.value + (" (suppressed)" if state.suppressed else "")


def _deciding_rule(states: dict[tuple[str, str], EffectiveState]) -> str | None:
    """The rule behind a person's first suppressed state (else their first state), recorded with
    the outbox row and the push's audit entry."""
    ordered = sorted(states.values(), key=lambda state: not state.suppressed)
    return ordered[0].rule if ordered else None
