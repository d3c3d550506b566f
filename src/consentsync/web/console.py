"""What the console shows and does, in plain dicts: one facade over the core's services that the
HTML pages and the JSON API both call, so that the two cannot drift apart."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from consentsync import audit
from consentsync.accounts import Account, Accounts
from consentsync.config import Config, ConfigError
from consentsync.domain import InvalidInput, ObjectionStatus, iso, normalise_email
from consentsync.ledger.schema import objections, subject_identifiers, subjects, sync_runs
from consentsync.ledger.service import Ledger, NotFound
from consentsync.sync import quarantine
from consentsync.sync.runs import count_runs, list_runs, show_run
from consentsync.web.plans import PlanDesk

PER_PAGE = 25
RUN_STATUSES = ("running", "succeeded", "stopped", "held", "failed", "dry_run")
EXPORT_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_SECRET_KEY = re.compile(r"secret|password|token|private|key", re.I)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a long list, and enough to link to its neighbours."""

    items: list[dict[str, Any]]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "page": self.page,
            "per_page": self.per_page,
            "total": self.total,
            "pages": self.pages,
        }


def _offset(page: int, per_page: int) -> int:
    return (max(1, page) - 1) * per_page


class Console:
    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.engine = ledger.engine
        self.accounts = Accounts(ledger.engine, clock=lambda: ledger.clock(), keyed=ledger.keyed_hasher())
        self.plans = PlanDesk(config, ledger)

    # -- overview ------------------------------------------------------------------------------

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
        alerts += [
            {"kind": "failing_connector", "connector": name, "message": f"{name}: its last runs all failed"}
            for name in failing
        ]
        alerts += self._held_pushes()
        pending = self.count_objections(pending_only=True)
        return {"connectors": rows, "alerts": alerts, "pending_objections": pending}

    def _held_pushes(self) -> list[dict[str, Any]]:
        """Connectors whose last run was held by the push guard, or observed with pushes held:
        each with a link to its plans."""
        import orjson

        alerts: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for item in self.config.settings.connectors:
                last = conn.execute(
                    select(sync_runs.c.status, sync_runs.c.counts, sync_runs.c.error)
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
                        }
                    )
        return alerts

    # -- runs ----------------------------------------------------------------------------------

    def runs(
        self,
        *,
        connector: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page: int = 1,
        per_page: int = PER_PAGE,
    ) -> Page:
        if status and status not in RUN_STATUSES:
            raise InvalidInput(f"unknown run result {status!r}: accepted are {', '.join(RUN_STATUSES)}")
        filters = {"connector": connector or None, "status": status or None, "since": since, "until": until}
        items = list_runs(self.engine, **filters, limit=per_page, offset=_offset(page, per_page))
        return Page(items, page, per_page, count_runs(self.engine, **filters))

    def run(self, run_id: str) -> dict[str, Any]:
        found = show_run(self.engine, run_id)
        if found is None:
            raise NotFound(f"no sync run with id {run_id!r}")
        return found

    def retry_quarantined(self, quarantine_id: int, account: Account) -> dict[str, Any]:
        from consentsync.app import can_reread

        return quarantine.retry(
            self.engine,
            quarantine_id,
            actor=account.name,
            now=self.ledger.clock(),
            can_reread=lambda name: can_reread(self.config, name),
        )

    # -- audit ---------------------------------------------------------------------------------

    def subject_uids_for_email(self, email: str) -> list[str]:
        """The subjects an address names, the erased ones included (through the keyed hash)."""
        return self.ledger.subject_uids_for_email(normalise_email(email))

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
    ) -> Page:
        filters = {
            "subject_uids": subjects,
            "connector": connector or None,
            "rule": rule or None,
            "action": action or None,
            "since": since,
            "until": until,
        }
        with self.engine.connect() as conn:
            total = audit.count(conn, **filters)
            items = list(
                audit.entries(
                    conn, **filters, limit=per_page, offset=_offset(page, per_page), newest_first=True
                )
            )
        return Page(items, page, per_page, total)

    def verify_audit(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return audit.verify(conn).as_dict()

    # -- subjects ------------------------------------------------------------------------------

    def subject_by_email(self, email: str) -> dict[str, Any]:
        return self.ledger.subject_view(normalise_email(email))

    def subject(self, uid: str) -> dict[str, Any]:
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
        return self.ledger.subject_view(email)

    def export(self, uid: str, fmt: str) -> tuple[bytes, str, str]:
        """(content, media type, file name) of one subject's record."""
        from consentsync.export import write_export

        if fmt not in EXPORT_TYPES:
            raise InvalidInput(f"unknown export format {fmt!r}: accepted are {', '.join(EXPORT_TYPES)}")
        view = self.subject(uid)
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
        restricted person, nor one a subject-wide rule keeps from being contacted."""
        days = (
            self.config.settings.policy.requested_stale_after_days
            if older_than_days is None
            else older_than_days
        )
        rows = self.ledger.stale_requests(days)
        start = _offset(page, per_page)
        return Page(rows[start : start + per_page], page, per_page, len(rows))

    # -- objections ----------------------------------------------------------------------------

    def count_objections(self, *, pending_only: bool) -> int:
        from sqlalchemy import func

        query = select(func.count()).select_from(objections)
        if pending_only:
            query = query.where(objections.c.status == ObjectionStatus.PENDING.value)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def objections(self, *, pending_only: bool, page: int = 1, per_page: int = PER_PAGE) -> Page:
        rows = self.ledger.list_objections(pending_only=pending_only)  # pending first, oldest first
        start = _offset(page, per_page)
        return Page(rows[start : start + per_page], page, per_page, len(rows))

    def objection(self, objection_id: int) -> dict[str, Any]:
        """One objection with its subject's context: current state, history, other objections."""
        found = next((o for o in self.ledger.list_objections() if o["id"] == objection_id), None)
        if found is None:
            raise NotFound(f"no objection with id {objection_id}")
        try:
            context = self.subject(found["subject"])
        except NotFound:
            context = None  # erased since: the objection stays, the person's details do not
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
                            "error": str(error),
                        }
                    )
            connectors.append(
                {
                    "name": item.name,
                    "vendor": item.vendor,
                    "schedule": item.schedule.model_dump(exclude_none=True),
                    "settings": {
                        k: ("(hidden)" if _SECRET_KEY.search(k) else v) for k, v in item.settings.items()
                    },
                    "mappings": mappings,
                }
            )
        return {
            "file": str(self.config.path),
            "ledger": _database_kind(self.config.ledger_url),
            "channels": list(self.config.channels),
            "policy": settings.policy.model_dump(mode="json"),
            "purposes": [p.model_dump(mode="json") for p in settings.purposes],
            "connectors": connectors,
        }


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


def parse_day(value: str | None, what: str, *, end: bool = False) -> datetime | None:
    """A date (YYYY-MM-DD, UTC) or ISO time from a filter; ``end`` makes a date's end exclusive."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = datetime.fromisoformat(value).replace(tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC here, where a time at the edge of the calendar fails as input, not later.
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{what}: expected a date YYYY-MM-DD or an ISO 8601 time, got {value!r}") from None


__all__ = ["EXPORT_TYPES", "PER_PAGE", "RUN_STATUSES", "Console", "Page", "iso", "parse_day"]
